//! Tests of `mcap_recording` (a file of their own: the module is near the size limit).

use super::*;
use crate::recording::tests::{assert_round_trip, messages};
use da3_msg::arrow::array::ArrayRef;
use da3_msg::ImageFrame;

fn write_all(
    msgs: &[(String, MetadataParameters, ArrayRef)],
    per_chunk: usize,
    compression: Compression,
) -> McapRecordingWriter<Cursor<Vec<u8>>> {
    let mut w = McapRecordingWriter::new(Cursor::new(Vec::new()), compression).unwrap();
    for (i, (s, p, a)) in msgs.iter().enumerate() {
        assert_eq!(w.push(s, 1000 + i as i64, p, a.as_ref()).unwrap(), i as u64);
        if w.pending() >= per_chunk {
            w.flush().unwrap();
        }
    }
    w
}

#[test]
fn every_message_kind_round_trips_exactly() {
    let msgs = messages();
    for compression in [Compression::Zstd, Compression::Lz4, Compression::None] {
        let bytes = write_all(&msgs, 2, compression)
            .finish()
            .unwrap()
            .into_inner();
        let mut r = McapRecordingReader::new(Cursor::new(bytes), "mem").unwrap();
        let got: Vec<RecordedMessage> = r.by_ref().map(|m| m.unwrap()).collect();
        assert!(r.truncated().is_none(), "{:?}", r.truncated());
        assert_round_trip(&got, &msgs);
    }
}

#[test]
fn payloads_live_once_in_the_file() {
    // A 64x48 RGB frame: its bytes are in the RawImage, not again in the record.
    let mut f = ImageFrame::rgb8(64, 48, (0..64 * 48 * 3).map(|i| (i * 7) as u8).collect());
    f.info.frame_id = Some(1);
    let (a, p) = f.to_message();
    let msgs = vec![("image".to_string(), p, a)];
    let mut w = write_all(&msgs, 1, Compression::None);
    w.flush().unwrap();
    let len = w.bytes_written() as usize;
    assert!(len > 64 * 48 * 3 && len < 64 * 48 * 3 + 4096, "{len} bytes");
    let mut r = McapRecordingReader::new(Cursor::new(w.abandon().into_inner()), "m").unwrap();
    let info = r.next_info().unwrap().unwrap();
    assert_eq!(
        (info.stream.as_str(), info.arrow_type.as_str()),
        ("image", "UInt8")
    );
    assert!(info.payload_len >= 64 * 48 * 3);
}

#[test]
fn cut_file_reads_up_to_the_last_complete_chunk() {
    let msgs = messages();
    let mut w = McapRecordingWriter::new(Cursor::new(Vec::new()), Compression::Zstd).unwrap();
    let mut ends = vec![w.bytes_written()];
    for (i, (s, p, a)) in msgs.iter().enumerate() {
        w.push(s, i as i64, p, a.as_ref()).unwrap();
        if i % 2 == 1 {
            w.flush().unwrap();
            ends.push(w.bytes_written());
        }
    }
    // No finish: like a killed recorder (no summary, no footer).
    let full = w.abandon().into_inner();
    assert_eq!(*ends.last().unwrap() as usize, full.len());
    let mut last_n = 0;
    for cut in 0..=full.len() {
        let Ok(mut r) = McapRecordingReader::new(Cursor::new(full[..cut].to_vec()), "cut") else {
            assert!(cut < 8, "cut at {cut}: the magic is there");
            continue;
        };
        let n = r.by_ref().inspect(|m| assert!(m.is_ok(), "{m:?}")).count();
        let complete = ends
            .iter()
            .filter(|&&e| e as usize <= cut)
            .count()
            .saturating_sub(1);
        // A flush writes a chunk, then its message indexes: a cut in
        // those still has the whole chunk.
        assert!(
            n == complete * 2 || (n == complete * 2 + 2 && !ends.contains(&(cut as u64))),
            "cut at {cut}: {n} messages, {complete} complete chunks"
        );
        assert!(
            n >= last_n,
            "cut at {cut}: fewer messages than a shorter cut"
        );
        last_n = n;
        assert!(r.truncated().is_some(), "cut at {cut} not reported");
    }
}

#[test]
fn the_record_descriptor_describes_the_record() {
    use prost_types::field_descriptor_proto::Type;
    let set = prost_types::FileDescriptorSet::decode(&record_descriptor()[..]).unwrap();
    let msg = &set.file[0].message_type[0];
    assert_eq!(
        format!("{}.{}", set.file[0].package(), msg.name()),
        RECORD_SCHEMA
    );
    // Every field of `Record`, by number and type, against prost's encoding.
    let r = Record {
        stream: "s".into(),
        seq: 7,
        recv_ns: -3,
        metadata: "{}".into(),
        arrow_type: "UInt8".into(),
        payload: vec![1, 2],
        payload_topic: "t".into(),
    };
    let bytes = r.encode_to_vec();
    let mut buf = &bytes[..];
    let mut seen = Vec::new();
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).unwrap();
        let (number, wire) = ((key >> 3) as i32, key & 7);
        let field = msg.field.iter().find(|f| f.number() == number).unwrap();
        let want_wire = match field.r#type() {
            Type::Uint64 | Type::Int64 => 0,
            _ => 2,
        };
        assert_eq!(wire, want_wire, "{}", field.name());
        if wire == 0 {
            prost::encoding::decode_varint(&mut buf).unwrap();
        } else {
            let n = prost::encoding::decode_varint(&mut buf).unwrap() as usize;
            buf = &buf[n..];
        }
        seen.push(field.name().to_string());
    }
    assert_eq!(seen.len(), msg.field.len());
}

#[test]
fn a_cut_file_is_recovered_into_a_finished_one() {
    let msgs = messages();
    let mut w = write_all(&msgs, 2, Compression::Zstd);
    w.flush().unwrap();
    let d = tempfile::tempdir().unwrap();
    let (cut, fixed) = (d.path().join("cut.mcap"), d.path().join("fixed.mcap"));
    std::fs::write(&cut, w.abandon().into_inner()).unwrap();
    let r = recover(&cut, &fixed, Compression::Lz4).unwrap();
    assert!(r.stopped.is_some(), "no summary: the input ends early");
    let mut back = McapRecordingReader::open(&fixed).unwrap();
    let got: Vec<RecordedMessage> = back.by_ref().map(|m| m.unwrap()).collect();
    assert!(back.truncated().is_none(), "{:?}", back.truncated());
    assert_eq!(got.len(), msgs.len());
    for (m, (s, p, a)) in got.iter().zip(&msgs) {
        assert_eq!((&m.stream, &m.metadata), (s, p));
        assert_eq!(m.data.to_data(), a.to_data());
    }
    // The summary is there: the indexed reader of the mcap crate reads it.
    let bytes = std::fs::read(&fixed).unwrap();
    let summary = mcap::Summary::read(&bytes).unwrap().unwrap();
    assert_eq!(
        summary.stats.unwrap().message_count,
        r.messages,
        "every copied message is in the summary"
    );
}

#[test]
fn not_mcap_is_a_clear_error() {
    let e = McapRecordingReader::new(Cursor::new(Vec::new()), "x.mcap")
        .err()
        .unwrap();
    assert!(e.to_string().contains("x.mcap"), "{e}");
    let e = McapRecordingReader::new(Cursor::new(b"PAR1 and more bytes".to_vec()), "y")
        .err()
        .unwrap();
    assert!(e.to_string().contains("MCAP magic"), "{e}");
}
