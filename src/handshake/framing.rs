//! Message body framing: Content-Length and Transfer-Encoding (RFC 9112 §6).
//!
//! A proxy and its upstream that disagree on where a body ends disagree on
//! where the next request starts: request smuggling. So every ambiguous
//! framing is refused here, before anything is forwarded.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderName, Version};

use super::syntax::trim_ows;
use super::HeadError;

/// How a request body is delimited.
///
/// ```
/// use bytes::BytesMut;
/// use wsproxy::handshake::{parse_request, BodyLength, Limits, Status};
///
/// let mut buf = BytesMut::from("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
/// let Status::Complete(head) = parse_request(&mut buf, &Limits::default())? else {
///     unreachable!("the head is complete")
/// };
/// assert_eq!(head.body_length(), BodyLength::Fixed(5));
/// assert_eq!(&buf[..], b"hello");
/// # Ok::<(), wsproxy::handshake::HandshakeError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyLength {
    /// Exactly this many bytes (0 without Content-Length or
    /// Transfer-Encoding, RFC 9112 §6.3 rule 7).
    Fixed(u64),
    /// Chunked transfer coding, ending with the zero-length chunk.
    Chunked,
}

/// The framing headers, gathered while the header fields go by once.
#[derive(Debug, Default)]
pub(crate) struct Framing {
    transfer_encoding: bool,
    /// Transfer-Encoding fields seen (saturating).
    transfer_encoding_fields: u8,
    /// Whether the last Transfer-Encoding field is exactly `chunked`: one
    /// coding, the only one a request may use toward this proxy.
    only_chunked: bool,
    /// Whether the last non-empty transfer coding so far is `chunked`.
    /// Only ever set while reading a Transfer-Encoding field.
    chunked_last: bool,
    content_length: Option<u64>,
    /// Content-Length values seen, over fields and lists (saturating).
    content_length_values: u8,
    /// The first fault in a Content-Length value.
    content_length_error: Option<HeadError>,
}

impl Framing {
    /// The framing facts of a whole header map, for code outside the parser
    /// (the body scanner) that must agree with it exactly.
    pub(crate) fn of(headers: &http::HeaderMap) -> Self {
        let mut framing = Self::default();
        for name in [TRANSFER_ENCODING, CONTENT_LENGTH] {
            for value in headers.get_all(&name) {
                framing.observe(&name, value.as_bytes());
            }
        }
        framing
    }

    /// Whether any Transfer-Encoding is present.
    pub(crate) fn has_transfer_encoding(&self) -> bool {
        self.transfer_encoding
    }

    /// Whether the last transfer coding is `chunked`.
    pub(crate) fn is_chunked(&self) -> bool {
        self.chunked_last
    }

    /// Whether any Content-Length is present: each one either sets the
    /// length or records its fault.
    fn has_content_length(&self) -> bool {
        self.content_length.is_some() || self.content_length_error.is_some()
    }

    /// The agreed Content-Length, if any.
    pub(crate) fn agreed_content_length(&self) -> Result<Option<u64>, HeadError> {
        match &self.content_length_error {
            Some(e) => Err(e.clone()),
            None => Ok(self.content_length),
        }
    }

    /// Takes note of one header field.
    pub(super) fn observe(&mut self, name: &HeaderName, value: &[u8]) {
        if name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
            self.transfer_encoding_fields = self.transfer_encoding_fields.saturating_add(1);
            self.only_chunked = trim_ows(value).eq_ignore_ascii_case(b"chunked");
            let mut codings = value.split(|&b| b == b',').map(trim_ows);
            if let Some(last) = codings.rfind(|coding| !coding.is_empty()) {
                self.chunked_last = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if name == CONTENT_LENGTH && self.content_length_error.is_none() {
            // After a fault the field is still known present (see
            // `has_content_length`); later values cannot change the verdict.
            if let Err(e) = self.content_length(value) {
                self.content_length_error = Some(e);
            }
        }
    }

    /// Repeated equal values (`5, 5` or two fields) are accepted here as
    /// RFC 9112 §6.3 rule 5 allows, for responses; differing ones are not.
    /// A request refuses any repetition (`request_body`).
    fn content_length(&mut self, value: &[u8]) -> Result<(), HeadError> {
        for item in value.split(|&b| b == b',') {
            self.content_length_values = self.content_length_values.saturating_add(1);
            let n = parse_decimal(trim_ows(item)).ok_or(HeadError::InvalidContentLength)?;
            match self.content_length {
                Some(m) if m != n => return Err(HeadError::DifferingContentLength),
                _ => self.content_length = Some(n),
            }
        }
        Ok(())
    }

    /// Checks the framing of a request and returns its body length.
    ///
    /// A request's Transfer-Encoding must be exactly one field holding
    /// exactly `chunked`, the one coding the proxy re-frames: anything else
    /// would reach the upstream as the client wrote it, and proxies and
    /// servers disagree on lists and repeated fields (request smuggling).
    /// Duplicate fields and a list not ending in `chunked` are 400 (RFC 9112
    /// §6.3 requires it for the latter; nginx answers a duplicate with 400);
    /// codings before a final `chunked` are 501, as RFC 9112 §6.1 advises
    /// for a coding the server does not implement and as nginx answers.
    pub(super) fn request_body(self, version: Version) -> Result<BodyLength, HeadError> {
        if self.transfer_encoding {
            if self.has_content_length() {
                return Err(HeadError::ContentLengthWithTransferEncoding);
            }
            if version == Version::HTTP_10 {
                return Err(HeadError::TransferEncodingInHttp10);
            }
            if self.transfer_encoding_fields > 1 {
                return Err(HeadError::DuplicateTransferEncoding);
            }
            if !self.chunked_last {
                return Err(HeadError::TransferEncodingNotChunked);
            }
            if !self.only_chunked {
                return Err(HeadError::UnsupportedTransferCoding);
            }
            return Ok(BodyLength::Chunked);
        }
        match self.content_length_error {
            Some(e) => Err(e),
            None if self.content_length_values > 1 => Err(HeadError::DuplicateContentLength),
            None => Ok(BodyLength::Fixed(self.content_length.unwrap_or(0))),
        }
    }

    /// Checks the framing of a response.
    ///
    /// Unlike a request, a response may end a non-chunked Transfer-Encoding
    /// by closing the connection (RFC 9112 §6.3 rule 4): not an error.
    pub(super) fn check_response(self) -> Result<(), HeadError> {
        if self.transfer_encoding && self.has_content_length() {
            return Err(HeadError::ContentLengthWithTransferEncoding);
        }
        self.content_length_error.map_or(Ok(()), Err)
    }
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn framing(headers: &HeaderMap) -> Framing {
        let mut framing = Framing::default();
        for (name, value) in headers {
            framing.observe(name, value.as_bytes());
        }
        framing
    }

    fn request_body(headers: &HeaderMap, version: Version) -> Result<BodyLength, HeadError> {
        framing(headers).request_body(version)
    }

    fn check_response(headers: &HeaderMap) -> Result<(), HeadError> {
        framing(headers).check_response()
    }

    fn map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for &(name, value) in fields {
            map.append(name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn request_body_length_follows_the_framing_headers() {
        let v11 = Version::HTTP_11;
        assert_eq!(request_body(&map(&[]), v11), Ok(BodyLength::Fixed(0)));
        assert_eq!(
            request_body(&map(&[("content-length", "42")]), v11),
            Ok(BodyLength::Fixed(42))
        );
        assert_eq!(
            request_body(&map(&[("content-length", " 7 ")]), v11),
            Ok(BodyLength::Fixed(7))
        );
        assert_eq!(
            request_body(&map(&[("transfer-encoding", "Chunked")]), v11),
            Ok(BodyLength::Chunked)
        );
    }

    #[test]
    fn ambiguous_request_framing_is_refused() {
        let v11 = Version::HTTP_11;
        let cases: &[(&[(&str, &str)], HeadError)] = &[
            (
                &[("content-length", "1"), ("transfer-encoding", "chunked")],
                HeadError::ContentLengthWithTransferEncoding,
            ),
            (
                &[("content-length", "x"), ("transfer-encoding", "chunked")],
                HeadError::ContentLengthWithTransferEncoding,
            ),
            (
                &[("content-length", "1"), ("content-length", "2")],
                HeadError::DifferingContentLength,
            ),
            (
                &[("content-length", "1, 2")],
                HeadError::DifferingContentLength,
            ),
            (
                &[("content-length", "5"), ("content-length", "5")],
                HeadError::DuplicateContentLength,
            ),
            (
                &[("content-length", "5, 5")],
                HeadError::DuplicateContentLength,
            ),
            (&[("content-length", "+1")], HeadError::InvalidContentLength),
            (&[("content-length", "")], HeadError::InvalidContentLength),
            (&[("content-length", "1,")], HeadError::InvalidContentLength),
            (
                &[("content-length", "0x10")],
                HeadError::InvalidContentLength,
            ),
            (
                &[("content-length", "18446744073709551616")],
                HeadError::InvalidContentLength,
            ),
            (
                &[("transfer-encoding", "chunked, gzip")],
                HeadError::TransferEncodingNotChunked,
            ),
            (
                &[("transfer-encoding", "chunkedx")],
                HeadError::TransferEncodingNotChunked,
            ),
            (
                &[("transfer-encoding", "")],
                HeadError::TransferEncodingNotChunked,
            ),
            (
                &[("transfer-encoding", "gzip, Chunked")],
                HeadError::UnsupportedTransferCoding,
            ),
            (
                &[("transfer-encoding", "identity, chunked")],
                HeadError::UnsupportedTransferCoding,
            ),
            (
                &[("transfer-encoding", "chunked, chunked")],
                HeadError::UnsupportedTransferCoding,
            ),
            (
                &[("transfer-encoding", "chunked,")],
                HeadError::UnsupportedTransferCoding,
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                HeadError::DuplicateTransferEncoding,
            ),
            (
                &[
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked"),
                ],
                HeadError::DuplicateTransferEncoding,
            ),
        ];
        for (fields, want) in cases {
            let headers = map(fields);
            assert_eq!(
                request_body(&headers, v11).as_ref(),
                Err(want),
                "{fields:?}"
            );
        }
        let chunked = map(&[("transfer-encoding", "chunked")]);
        assert_eq!(
            request_body(&chunked, Version::HTTP_10),
            Err(HeadError::TransferEncodingInHttp10)
        );
    }

    #[test]
    fn response_may_end_a_non_chunked_coding_by_closing() {
        assert_eq!(
            check_response(&map(&[("transfer-encoding", "gzip")])),
            Ok(())
        );
        assert_eq!(
            check_response(&map(&[
                ("transfer-encoding", "chunked"),
                ("content-length", "3")
            ])),
            Err(HeadError::ContentLengthWithTransferEncoding)
        );
        assert_eq!(
            check_response(&map(&[("content-length", "3"), ("content-length", "4")])),
            Err(HeadError::DifferingContentLength)
        );
    }
}
