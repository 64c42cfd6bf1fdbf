//! The request target sent upstream: origin-form (RFC 9112 §3.2.1), with
//! the path a route rewrote it to, copied only when the route changed it.

use std::borrow::Cow;

use http::header::HOST;
use http::{HeaderValue, Request};

/// The path a route rewrote the target's to; `None` when it kept the
/// target's own, which is then not copied.
pub(super) fn rewritten_path(path_and_query: Cow<'_, str>) -> Option<String> {
    match path_and_query {
        Cow::Borrowed(_) => None,
        Cow::Owned(path) => Some(path),
    }
}

/// [`to_origin_form`] with the path a route rewrote the target's to, or
/// `None` for the target's own.
pub(super) fn routed_origin_form<B>(
    request: &mut Request<B>,
    path: Option<String>,
) -> Result<(), ()> {
    match path {
        Some(path) => to_origin_form(request, &path),
        // Origin-form already, with the path it keeps: nothing to redo.
        None if request.uri().authority().is_none() => Ok(()),
        None => {
            let uri = request.uri();
            let path = uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned();
            to_origin_form(request, &path)
        }
    }
}

/// Turns the target into origin-form for the upstream. An absolute-form
/// target's authority replaces Host (RFC 9112 §3.2.2), so that the upstream
/// sees the host the route was chosen by.
pub(super) fn to_origin_form<B>(request: &mut Request<B>, path: &str) -> Result<(), ()> {
    if let Some(authority) = request.uri().authority() {
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| ())?;
        request.headers_mut().insert(HOST, host);
    }
    *request.uri_mut() = path.parse().map_err(|_| ())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str) -> Request<()> {
        Request::get(target).header(HOST, "a").body(()).unwrap()
    }

    #[test]
    fn a_kept_path_leaves_an_origin_form_target_as_it_came() {
        let mut req = request("/chat?room=1");
        routed_origin_form(&mut req, None).unwrap();
        assert_eq!(req.uri(), "/chat?room=1");
        assert_eq!(req.headers()[HOST], "a");
    }

    #[test]
    fn a_rewritten_or_absolute_target_becomes_origin_form() {
        let mut req = request("/chat/x?y");
        routed_origin_form(&mut req, Some("/x?y".into())).unwrap();
        assert_eq!(req.uri(), "/x?y");

        // An absolute-form target's authority becomes the Host.
        let mut req = request("http://b.test:8080/ws?z");
        routed_origin_form(&mut req, None).unwrap();
        assert_eq!(req.uri(), "/ws?z");
        assert_eq!(req.headers()[HOST], "b.test:8080");
    }

    #[test]
    fn only_a_rewritten_path_is_owned() {
        assert_eq!(rewritten_path(Cow::Borrowed("/a")), None);
        assert_eq!(rewritten_path(Cow::Owned("/b".into())), Some("/b".into()));
    }
}
