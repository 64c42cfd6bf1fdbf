use std::io::IoSlice;

use bytes::Buf;

use super::*;
use proptest::prelude::*;

/// Re-frames `wire` fed in pieces cut at `cuts`; the output and the
/// bytes left after the body.
fn run(
    reframer: &mut ChunkedReframer,
    wire: &[u8],
    cuts: &[usize],
) -> Result<(Vec<u8>, Vec<u8>), RequestBodyError> {
    let mut out = Vec::new();
    let mut pending = Vec::new();
    let mut from = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(wire.len())).collect();
    ends.sort_unstable();
    ends.push(wire.len());
    for end in ends {
        pending.extend_from_slice(&wire[from..end.max(from)]);
        from = end.max(from);
        while !pending.is_empty() && !reframer.is_done() {
            let step = reframer.reframe(&pending)?;
            assert!(step.consumed > 0, "no progress");
            assert_eq!(step.data.end.max(step.consumed), step.consumed);
            out.extend_from_slice(step.framing);
            out.extend_from_slice(&pending[step.data.clone()]);
            let consumed = step.consumed;
            pending.drain(..consumed);
        }
    }
    Ok((out, pending))
}

/// Like [`run`], through batches read the way a vectored write reads
/// them: at most `iov` slices, then `advance`.
fn run_batched(
    reframer: &mut ChunkedReframer,
    wire: &[u8],
    cut: usize,
    iov: usize,
) -> Result<(Vec<u8>, Vec<u8>), RequestBodyError> {
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for part in [&wire[..cut], &wire[cut..]] {
        pending.extend_from_slice(part);
        while !pending.is_empty() && !reframer.is_done() {
            let mut batch = reframer.reframe_batch(&pending);
            let (consumed, error) = (batch.consumed(), batch.error());
            while batch.has_remaining() {
                let mut slices = vec![IoSlice::new(&[]); iov];
                let n = batch.chunks_vectored(&mut slices);
                assert!(n > 0);
                // A short write: all but the last byte of what was offered.
                let offered: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
                let wrote = offered.len().saturating_sub(1).max(1);
                out.extend_from_slice(&offered[..wrote]);
                batch.advance(wrote);
            }
            pending.drain(..consumed);
            if let Some(e) = error {
                return Err(e);
            }
        }
    }
    Ok((out, pending))
}

fn whole(wire: &[u8], limit: u64) -> Result<(Vec<u8>, Vec<u8>), RequestBodyError> {
    run(&mut ChunkedReframer::new(limit), wire, &[])
}

#[test]
fn sizes_are_rewritten_and_extensions_and_trailers_dropped() {
    let wire = b"4;name=value\r\nWiki\r\n5 \r\npedia\r\n00E ; a=\"b\tc\"\r\n in\r\n\r\nchunks.\r\n0;z\r\nExpires: never\r\nX-A: b\r\n\r\nNEXT";
    let (out, rest) = whole(wire, 0).unwrap();
    assert_eq!(
        out,
        b"4\r\nWiki\r\n5\r\npedia\r\ne\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n"
    );
    assert_eq!(rest, b"NEXT");
}

#[test]
fn an_empty_body_is_the_last_chunk_alone() {
    assert_eq!(
        whole(b"0\r\n\r\n", 1).unwrap(),
        (b"0\r\n\r\n".to_vec(), Vec::new())
    );
    assert_eq!(whole(b"000\r\n\r\nX", 1).unwrap().0, b"0\r\n\r\n");
}

#[test]
fn huge_sizes_are_refused_whatever_the_limit() {
    for wire in [
        &b"ffffffffffffffff\r\n"[..],
        b"8000000000000000\r\n",
        b"10000000000000\r\n",
    ] {
        for limit in [0, 1 << 20] {
            let err = whole(wire, limit).unwrap_err();
            assert_eq!(err, RequestBodyError::ChunkSize, "{wire:?}");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
    }
    // The largest size HAProxy takes still parses without a limit.
    let mut r = ChunkedReframer::new(0);
    assert!(r.reframe(b"fffffffffffff\r\n").is_ok());
}

#[test]
fn a_chunk_over_the_limit_is_refused_before_any_of_it_goes_out() {
    let mut r = ChunkedReframer::new(1 << 20);
    let err = r.reframe(b"100000005\r\nhello").unwrap_err();
    assert_eq!(err, RequestBodyError::TooLarge { limit: 1 << 20 });
    assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The sum counts, not just one chunk: 4 + 4 > 6.
    let mut r = ChunkedReframer::new(6);
    let step = r.reframe(b"4\r\nabcd\r\n4\r\nefgh\r\n").unwrap();
    assert_eq!((step.framing, step.data), (&b"4\r\n"[..], 3..7));
    let err = r.reframe(b"\r\n4\r\nefgh\r\n").unwrap_err();
    assert_eq!(err, RequestBodyError::TooLarge { limit: 6 });
    // Exactly the limit is fine.
    assert!(whole(b"6\r\nabcdef\r\n0\r\n\r\n", 6).is_ok());
    // Checked when the size ends, before its extension is read.
    let mut r = ChunkedReframer::new(6);
    assert!(matches!(
        r.reframe(b"7;"),
        Err(RequestBodyError::TooLarge { .. })
    ));
}

#[test]
fn control_bytes_in_extensions_are_refused() {
    for byte in [0u8, 1, 0x0b, 0x1b, 0x7f] {
        let wire = [b"1;a=".as_slice(), &[byte], b"\r\nx\r\n0\r\n\r\n"].concat();
        let err = whole(&wire, 0).unwrap_err();
        assert_eq!(err, RequestBodyError::ExtensionControlByte { byte });
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn broken_framing_is_refused() {
    for wire in [
        &b"x\r\n"[..],
        b"\r\n",
        b";a\r\n",
        b"5\nhello\r\n",
        b"5 x\r\nhello\r\n",
        b"5\r\nhelloX\r\n",
        b"5\r\nhello\r\n0\r\n\n",
        b"5\r\nhello\r\n0\r\n\r\r",
        b"1;a\nb\r\n",
    ] {
        let err = whole(wire, 0).unwrap_err();
        assert_eq!(err, RequestBodyError::Chunk, "{wire:?}");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
    let mut long = b"1;".to_vec();
    long.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE + 1));
    assert_eq!(whole(&long, 0), Err(RequestBodyError::Chunk));
}

#[test]
fn bad_trailers_are_refused() {
    let mut big = b"0\r\n".to_vec();
    for i in 0..2000 {
        big.extend(format!("X-{i}: {}\r\n", "v".repeat(8)).as_bytes());
    }
    big.extend(b"\r\n");
    let many: Vec<u8> = [
        b"0\r\n".to_vec(),
        (0..65)
            .flat_map(|i| format!("X-{i}: v\r\n").into_bytes())
            .collect(),
        b"\r\n".to_vec(),
    ]
    .concat();
    for wire in [
        &b"0\r\nno colon\r\n\r\n"[..],
        b"0\r\nX: a\x01b\r\n\r\n",
        b"0\r\n folded: x\r\n\r\n",
        b"0\r\nX: a\nY: b\r\n\r\n",
        &big,
        &many,
    ] {
        let err = whole(wire, 0).unwrap_err();
        assert!(
            matches!(err, RequestBodyError::Trailers | RequestBodyError::Chunk),
            "{err:?}"
        );
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn a_huge_chunk_goes_out_in_pieces_a_32_bit_parser_reads_right() {
    // 2^32 + 5 bytes of data, fed a MiB at a time without copying it.
    let size = (1u64 << 32) + 5;
    let mut r = ChunkedReframer::new(0);
    let step = r.reframe(b"100000005\r\n").unwrap();
    let mut sizes = vec![step.framing.to_vec()];
    let block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let feed = &block[..left.min(block.len() as u64) as usize];
        let step = r.reframe(feed).unwrap();
        if !step.framing.is_empty() {
            sizes.push(step.framing.to_vec());
        }
        left -= step.consumed as u64;
    }
    let (end, rest) = run(&mut r, b"\r\n0\r\n\r\n", &[]).unwrap();
    assert!(rest.is_empty());
    assert_eq!(end, b"\r\n0\r\n\r\n");
    assert_eq!(sizes.len(), 257);
    assert_eq!(sizes[0], b"1000000\r\n");
    assert_eq!(sizes[1], b"\r\n1000000\r\n");
    assert_eq!(sizes[256], b"\r\n5\r\n");
}

#[test]
fn tiny_chunks_go_out_thirty_two_to_a_write() {
    let mut wire = b"1\r\nx\r\n".repeat(100);
    wire.extend(b"0\r\n\r\n");
    let mut r = ChunkedReframer::new(0);
    let mut input = &wire[..];
    let mut writes = 0;
    while !r.is_done() {
        let batch = r.reframe_batch(input);
        assert_eq!(batch.error(), None);
        input = &input[batch.consumed()..];
        writes += 1;
    }
    assert!(input.is_empty());
    assert_eq!(writes, 4);
}

#[test]
fn a_batch_keeps_what_came_before_a_fault() {
    let mut r = ChunkedReframer::new(8);
    let mut batch = r.reframe_batch(b"5\r\nhello\r\n5\r\nworld\r\n");
    assert_eq!(batch.error(), Some(RequestBodyError::TooLarge { limit: 8 }));
    assert_eq!(batch.copy_to_bytes(batch.remaining()), &b"5\r\nhello"[..]);
}

/// A valid chunked body: chunks with optional leading zeros and
/// extensions, optional trailers; and its canonical re-framing.
fn body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let chunk = (
        proptest::collection::vec(any::<u8>(), 1..40),
        0..3usize,
        proptest::option::of("[a-z]{1,5}(=[a-z0-9]{0,5})?"),
    );
    (
        proptest::collection::vec(chunk, 0..6),
        proptest::collection::vec("[A-Za-z]{1,8}: [ -~]{0,10}", 0..3),
    )
        .prop_map(|(chunks, trailers)| {
            let (mut wire, mut canon) = (Vec::new(), Vec::new());
            for (data, zeros, ext) in &chunks {
                let size = format!("{}{:X}", "0".repeat(*zeros), data.len());
                wire.extend(size.as_bytes());
                if let Some(ext) = ext {
                    wire.extend(format!(" ;{ext}").as_bytes());
                }
                wire.extend(b"\r\n");
                wire.extend(data);
                wire.extend(b"\r\n");
                canon.extend(format!("{:x}\r\n", data.len()).as_bytes());
                canon.extend(data);
                canon.extend(b"\r\n");
            }
            wire.extend(b"0\r\n");
            for t in &trailers {
                wire.extend(t.trim_end().as_bytes());
                wire.extend(b"\r\n");
            }
            wire.extend(b"\r\n");
            canon.extend(b"0\r\n\r\n");
            (wire, canon)
        })
}

proptest! {
    #[test]
    fn a_body_split_anywhere_reframes_like_the_whole(
        (wire, canon) in body(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let mut full = wire.clone();
        full.extend(b"GET / HTTP/1.1\r\n");
        let (whole_out, whole_rest) = whole(&full, 0).unwrap();
        prop_assert_eq!(&whole_out, &canon);
        prop_assert_eq!(&whole_rest[..], &b"GET / HTTP/1.1\r\n"[..]);
        let cuts: Vec<usize> = cuts.iter().map(|c| c.index(full.len())).collect();
        let split = run(&mut ChunkedReframer::new(0), &full, &cuts).unwrap();
        prop_assert_eq!(split, (whole_out, whole_rest));
    }

    #[test]
    fn batches_write_what_the_steps_write(
        (wire, canon) in body(),
        tiny in proptest::collection::vec(0..4usize, 0..40),
        cut in any::<prop::sample::Index>(),
        iov in 1..70usize,
    ) {
        // Many tiny chunks, then the generated body: batches fill up.
        let mut full: Vec<u8> = tiny.iter().flat_map(|&n| {
            let n = n + 1;
            [format!("{n:x};e\r\n").into_bytes(), vec![b'x'; n], b"\r\n".to_vec()].concat()
        }).collect();
        let mut expected: Vec<u8> = tiny.iter().flat_map(|&n| {
            let n = n + 1;
            [format!("{n:x}\r\n").into_bytes(), vec![b'x'; n], b"\r\n".to_vec()].concat()
        }).collect();
        full.extend(&wire);
        expected.extend(&canon);
        full.extend(b"NEXT");
        let cut = cut.index(full.len() + 1);
        let got = run_batched(&mut ChunkedReframer::new(0), &full, cut, iov).unwrap();
        prop_assert_eq!(got, (expected, b"NEXT".to_vec()));
    }

    #[test]
    fn batches_fail_where_the_steps_fail(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(bytes.len() + 1);
        let stepped = run(&mut ChunkedReframer::new(64), &bytes, &[cut]);
        let batched = run_batched(&mut ChunkedReframer::new(64), &bytes, cut, 64);
        prop_assert_eq!(stepped.err(), batched.err());
    }

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(bytes.len() + 1);
        let _ = run(&mut ChunkedReframer::new(64), &bytes, &[cut]);
    }
}
