//! Bad input to the recorder, through `integration_testing`. The recorder
//! judges nothing: broken da3 messages and arbitrary Arrow payloads with
//! arbitrary metadata must all be recorded verbatim, in order, next to the
//! good frames, and the recording must read back exactly. Only a message that
//! cannot be encoded at all is left out, counted in `Recorder::rejected`
//! (none can arrive through dora: what dora delivers is Arrow IPC already).
//! Both containers: Arrow IPC and MCAP (where the good frames and the
//! well-formed da3 messages get Foxglove views, and everything else goes
//! into the records as Arrow IPC).

use std::time::Duration;

use da3_msg::arrow::array::{Array, ArrayRef};
use da3_msg::{FrameInfo, ImageFrame, MetadataParameters};
use da3_testkit::bad::{garbage, CameraKit, ImageKit};
use da3_testkit::harness::{catch_crash, BadInputRun, Figures};
use da3_testkit::{frame_info, small_camera};
use recorder::format::{AnyReader, Format};
use recorder::mcap_recording::Compression;
use recorder::{Config, OutTarget};

const N_BAD: usize = 240;
const GOOD_EVERY: usize = 30;

fn frame(id: u64) -> ImageFrame {
    let mut f = ImageFrame::rgb8(6, 4, (0..72).map(|i| (i as u64 * 3 + id) as u8).collect());
    f.info = frame_info(id);
    f
}

#[test]
fn every_message_good_or_bad_is_recorded_verbatim() {
    record_bad_input(Format::Arrow, "recorder");
}

#[test]
fn every_message_good_or_bad_is_recorded_verbatim_in_mcap() {
    record_bad_input(Format::Mcap, "recorder (mcap)");
}

fn record_bad_input(format: Format, node: &'static str) {
    let BadInputRun {
        dir,
        mut events,
        mut rng,
    } = BadInputRun::new(0xDA3_0003).unwrap();
    let mut images = ImageKit::new(frame(0), 100_000).unwrap();
    let cameras = CameraKit {
        good: small_camera(FrameInfo::default()),
    };
    let mut sent: Vec<(String, MetadataParameters, ArrayRef)> = Vec::new();
    let mut good_at: Vec<usize> = Vec::new();
    let (mut n_bad, mut n_good) = (0u64, 0u64);
    for i in 0..=N_BAD {
        if i % GOOD_EVERY == 0 {
            let (a, p) = frame(n_good).to_message();
            events.input(0.0, "image", &a, &p).unwrap();
            good_at.push(sent.len());
            sent.push(("image".into(), p, a));
            n_good += 1;
        }
        if i == N_BAD {
            break;
        }
        let (input, case) = match rng.below(3) {
            0 => {
                images.good.info.frame_id = Some(i as u64);
                ("image", images.bad(&mut rng))
            }
            1 => ("camera_info", cameras.bad(&mut rng)),
            _ => ("anything", garbage(&mut rng)),
        };
        events.input(0.0, input, &case.array, &case.params).unwrap();
        sent.push((input.into(), case.params, case.array));
        n_bad += 1;
    }
    let tried = events.len() as u64;
    let (_node, mut stream, _rx) = events
        .start("recorder", &["image", "camera_info", "anything"], &[])
        .unwrap();
    let path = dir.path().join(format!("run.{}", format.extension()));
    let config = Config {
        out: OutTarget::File(path.clone()),
        format,
        compression: Compression::Zstd,
        flush: Duration::from_millis(200),
        batch: 16,
        rotate_bytes: None,
        rotate_after: None,
        sync: false,
    };
    let run = catch_crash(|| recorder::run(&mut stream, config));
    let rejected = run.as_ref().map(|r| r.rejected).unwrap_or(0);
    let back: Vec<_> = AnyReader::open(&path)
        .map(|r| r.collect::<Vec<_>>())
        .unwrap_or_default();
    // Good frames that read back as the same frame, at their place.
    let good_back = good_at
        .iter()
        .filter(|&&i| {
            let (_, p, a) = &sent[i];
            let want = ImageFrame::from_message(a.as_ref(), p).ok();
            back.get(i)
                .and_then(|m| m.as_ref().ok())
                .and_then(|m| ImageFrame::from_message(m.data.as_ref(), &m.metadata).ok())
                .is_some_and(|f| Some(f) == want)
        })
        .count() as u64;
    Figures {
        node,
        tried,
        bad: n_bad,
        rejected,
        good: n_good,
        good_out: good_back,
        crashed: run.is_err() as u64,
    }
    .print();
    let rec = run.expect("the recorder ends without error");
    assert_eq!(rec.rejected, 0, "nothing that dora can deliver is left out");
    assert_eq!(rec.written, sent.len() as u64);
    assert_eq!(back.len(), sent.len(), "every message recorded");
    for (i, (m, (input, params, array))) in back.iter().zip(&sent).enumerate() {
        let m = m
            .as_ref()
            .unwrap_or_else(|e| panic!("message {i} does not read back: {e:#}"));
        assert_eq!(m.seq, i as u64);
        assert_eq!(&m.stream, input, "message {i}");
        assert_eq!(&m.metadata, params, "message {i}: metadata");
        assert_eq!(m.data.data_type(), array.data_type(), "message {i}: type");
        assert_eq!(m.data.to_data(), array.to_data(), "message {i}: values");
    }
    assert_eq!(good_back, n_good, "every good frame reads back");
}
