//! Property tests of the tracker: any split of a valid stream gives the same
//! boundaries, counts and close frame as the whole; random bytes never
//! panic. `PROPTEST_CASES` raises the number of cases.

use proptest::prelude::*;

use super::*;

/// A frame as a peer with `role` sends it (masked with a fixed key from a
/// client).
pub(crate) fn frame(role: Role, head: u8, payload: &[u8]) -> Vec<u8> {
    frame_with_key(role, head, payload, [0xa1, 0xb2, 0xc3, 0xd4])
}

fn frame_with_key(role: Role, head: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = vec![head];
    let mask_bit = if role == Role::Client { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if role == Role::Client {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A control frame: opcode and payload.
type Control = (u8, Vec<u8>);

/// One step of a valid stream.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// A text or binary message in these fragments (at least one), with a
    /// control frame (opcode, payload) optionally after each fragment but
    /// the last.
    Message {
        binary: bool,
        rsv: u8,
        fragments: Vec<(usize, Option<Control>)>,
    },
    Control(u8, Vec<u8>),
    Close(u16, String),
}

fn payload_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..10,
        3 => 120usize..132,
        1 => 65_530usize..65_540,
    ]
}

fn control() -> impl Strategy<Value = Control> {
    (
        prop_oneof![Just(opcode::PING), Just(opcode::PONG)],
        proptest::collection::vec(any::<u8>(), 0..=125),
    )
}

pub(crate) fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (
            any::<bool>(),
            0u8..8,
            proptest::collection::vec((payload_len(), proptest::option::of(control())), 1..4),
        )
            .prop_map(|(binary, rsv, fragments)| Item::Message { binary, rsv, fragments }),
        1 => control().prop_map(|(op, p)| Item::Control(op, p)),
        1 => (1000u16..5000, "[a-z ]{0,20}").prop_map(|(c, r)| Item::Close(c, r)),
    ]
}

/// A valid stream: its bytes, the boundaries after each frame (offset and
/// kind), the number of messages and the first Close frame.
pub(crate) struct Stream {
    pub(crate) wire: Vec<u8>,
    pub(crate) boundaries: Vec<(usize, Boundary)>,
    pub(crate) messages: u64,
    pub(crate) close: Option<CloseFrame>,
}

pub(crate) fn build(role: Role, items: &[Item], key: [u8; 4]) -> Stream {
    let mut s = Stream {
        wire: Vec::new(),
        boundaries: Vec::new(),
        messages: 0,
        close: None,
    };
    let push = |s: &mut Stream, head: u8, payload: &[u8], after: Boundary| {
        s.wire
            .extend(frame_with_key(role, head, payload, key).iter().copied());
        s.boundaries.push((s.wire.len(), after));
    };
    for item in items {
        match item {
            Item::Message {
                binary,
                rsv,
                fragments,
            } => {
                let last = fragments.len() - 1;
                for (i, (len, between)) in fragments.iter().enumerate() {
                    let op = if i > 0 {
                        opcode::CONTINUATION
                    } else if *binary {
                        opcode::BINARY
                    } else {
                        opcode::TEXT
                    };
                    let fin = if i == last { 0x80 } else { 0 };
                    let rsv = if i == 0 { rsv << 4 } else { 0 };
                    let after = if i == last {
                        Boundary::Message
                    } else {
                        Boundary::Frame
                    };
                    push(&mut s, fin | rsv | op, &vec![0x42; *len], after);
                    if let (Some((op, payload)), true) = (between, i < last) {
                        push(&mut s, 0x80 | op, payload, Boundary::Frame);
                    }
                }
                s.messages += 1;
            }
            Item::Control(op, payload) => push(&mut s, 0x80 | op, payload, Boundary::Message),
            Item::Close(code, reason) => {
                let close = CloseFrame::new(*code, reason.as_str()).unwrap();
                let mut payload = code.to_be_bytes().to_vec();
                payload.extend_from_slice(reason.as_bytes());
                push(&mut s, 0x80 | opcode::CLOSE, &payload, Boundary::Message);
                s.close.get_or_insert(close);
            }
        }
    }
    s
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Client), Just(Role::Server)]
}

proptest! {
    #[test]
    fn any_split_gives_the_same_boundaries(
        role in role(),
        items in proptest::collection::vec(item(), 0..8),
        key in any::<[u8; 4]>(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let s = build(role, &items, key);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(s.wire.len() + 1)).collect();
        cuts.push(0);
        cuts.push(s.wire.len());
        cuts.sort_unstable();

        // observe(): at each cut, the tracker is at a boundary exactly when
        // the stream has one there.
        let mut t = FrameTracker::new(role);
        for w in cuts.windows(2) {
            t.observe(&s.wire[w[0]..w[1]]).unwrap();
            let want = s.boundaries.iter().find(|(at, _)| *at == w[1]).map(|(_, b)| *b);
            let want = if w[1] == 0 { Some(Boundary::Message) } else { want };
            prop_assert_eq!(t.boundary(), want, "at {}", w[1]);
        }
        prop_assert_eq!(t.messages(), s.messages);
        prop_assert_eq!(t.close(), s.close.clone());

        // observe_to_boundary(): the chunks split further, and every stop
        // is one of the stream's boundaries, each found once.
        let mut t = FrameTracker::new(role);
        let mut found = Vec::new();
        for w in cuts.windows(2) {
            let mut at = w[0];
            let mut steps = 0;
            while at < w[1] {
                let n = t.observe_to_boundary(&s.wire[at..w[1]]).unwrap();
                prop_assert!(n > 0);
                at += n;
                if let Some(b) = t.boundary() {
                    found.push((at, b));
                }
                steps += 1;
                prop_assert!(steps <= s.wire.len() + 1);
            }
        }
        prop_assert_eq!(found, s.boundaries);
        prop_assert_eq!(t.messages(), s.messages);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        role in role(),
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(bytes.len() + 1);
        let mut whole = FrameTracker::new(role);
        let whole_result = whole.observe(&bytes);
        let mut split = FrameTracker::new(role);
        let split_result = split.observe(&bytes[..cut]).and_then(|()| split.observe(&bytes[cut..]));
        // Splitting changes nothing, errors included.
        prop_assert_eq!(whole_result, split_result);
        prop_assert_eq!(whole.boundary(), split.boundary());
        prop_assert_eq!(whole.messages(), split.messages());
        prop_assert_eq!(whole.close(), split.close());
        let _ = whole.observe_to_boundary(&bytes);
    }
}
