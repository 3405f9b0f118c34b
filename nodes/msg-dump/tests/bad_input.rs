//! Bad input to msg-dump, through `integration_testing`: good messages of
//! every kind, broken ones (seeded, from `da3_testkit::bad`) and arbitrary
//! payloads without a `primitive`, interleaved. msg-dump records every message
//! in order; each one that breaks the da3 conventions must also be logged,
//! counted (`Summary::invalid`, in the final log line) and marked `invalid`
//! with the reason in its record; the others must not be.

use da3_msg::{keys, DepthKind, DepthMap, ImageFrame, Parameter, PointCloud};
use da3_testkit::bad::{garbage, CameraKit, DepthKit, ImageKit, PointsKit, NEW_ENCODINGS};
use da3_testkit::harness::{catch_crash, BadInputRun, Figures};
use da3_testkit::{frame_info as info, small_camera};
use serde_json::Value;

const N_BAD: usize = 260;
const GOOD_EVERY: usize = 20;

#[test]
fn every_message_is_recorded_and_broken_ones_are_marked_and_counted() {
    let BadInputRun {
        dir,
        mut events,
        mut rng,
    } = BadInputRun::new(0xDA3_0004).unwrap();
    let mut img = ImageFrame::rgb8(6, 4, (0..72).collect());
    img.info = info(0);
    let images = ImageKit::new(img, 100_000).unwrap();
    let depths = DepthKit {
        good: DepthMap {
            kind: DepthKind::Depth,
            width: 3,
            height: 2,
            values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            info: info(1),
            intrinsics: None,
            pose: None,
            is_metric: false,
        },
    };
    let cameras = CameraKit {
        good: small_camera(info(2)),
    };
    let points = PointsKit {
        good: PointCloud {
            xyz: vec![[0.0, 1.0, 2.0]; 3],
            rgb: vec![[9, 8, 7]; 3],
            info: info(3),
            is_metric: false,
        },
    };
    // Whether each message, in order, breaks the conventions.
    let mut broken: Vec<bool> = Vec::new();
    let mut kinds: Vec<&'static str> = Vec::new(); // for messages
    let mut is_good: Vec<bool> = Vec::new();
    let (mut n_bad, mut n_good) = (0u64, 0u64);
    let mut truncated = NEW_ENCODINGS.to_vec();
    for i in 0..=N_BAD {
        if i % GOOD_EVERY == 0 {
            let good = [
                images.good.to_message(),
                images.encoded(da3_msg::Encoding::Png).to_message(),
                images.encoded(da3_msg::Encoding::Yuv420).to_message(),
                images.encoded(da3_msg::Encoding::Mono16).to_message(),
                depths.good.to_message(),
                cameras.good.to_message(),
                points.good.to_message(),
            ];
            let (a, p) = good[rng.index(good.len())].clone();
            events.input(0.0, "in", &a, &p).unwrap();
            broken.push(false);
            kinds.push("good");
            is_good.push(true);
            n_good += 1;
        }
        if i == N_BAD {
            break;
        }
        let case = match rng.below(5) {
            // One truncated frame of each newer encoding first.
            0 => match truncated.pop() {
                Some(enc) => images.truncated(enc, &mut rng),
                None => images.bad(&mut rng),
            },
            1 => depths.bad(&mut rng),
            2 => cameras.bad(&mut rng),
            3 => points.bad(&mut rng),
            _ => {
                // Not a da3 message: not judged.
                let mut c = garbage(&mut rng);
                c.params.remove(keys::PRIMITIVE);
                c
            }
        };
        // msg-dump judges messages whose `primitive` names a da3 message (or
        // is not a string); it checks messages, it does not decode pictures.
        let judged = match case.params.get(keys::PRIMITIVE) {
            Some(Parameter::String(s)) => da3_msg::Primitive::parse(s).is_some(),
            Some(_) => true,
            None => false,
        };
        let is_broken = judged && !case.pixels_only;
        events.input(0.0, "in", &case.array, &case.params).unwrap();
        broken.push(is_broken);
        kinds.push(case.kind);
        is_good.push(false);
        n_bad += 1;
    }
    let tried = events.len() as u64;
    let (_node, mut stream, _rx) = events.start("dump", &["in"], &[]).unwrap();
    let out_path = dir.path().join("dump.jsonl");
    let out = std::fs::File::create(&out_path).unwrap();
    let run = catch_crash(|| msg_dump::run(&mut stream, Some(out), false, 0));
    let records: Vec<Value> = std::fs::read_to_string(&out_path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let want_invalid = broken.iter().filter(|&&b| b).count() as u64;
    let summary = run.as_ref().ok().copied().unwrap_or_default();
    Figures {
        node: "msg-dump",
        tried,
        bad: n_bad,
        rejected: summary.invalid,
        good: n_good,
        good_out: records
            .iter()
            .zip(&is_good)
            .filter(|(r, g)| **g && r.get("invalid").is_none())
            .count() as u64,
        crashed: run.is_err() as u64,
    }
    .print();
    println!(
        "msg-dump: {want_invalid} messages break the conventions, {} are well-formed but broken pictures or not da3 messages",
        n_bad - want_invalid
    );
    let summary = run.expect("msg-dump ends without error");
    assert!(
        truncated.is_empty(),
        "every newer encoding was truncated once"
    );
    assert_eq!(summary.messages, tried, "every message recorded");
    assert_eq!(records.len() as u64, tried);
    assert_eq!(
        summary.invalid, want_invalid,
        "every broken message counted"
    );
    for (i, (r, b)) in records.iter().zip(&broken).enumerate() {
        assert_eq!(r["input"], "in");
        match (b, r.get("invalid")) {
            (true, Some(why)) => assert!(!why.as_str().unwrap_or("").is_empty(), "record {i}"),
            (false, None) => {}
            (true, None) => panic!("record {i} ({}): broken message not marked: {r}", kinds[i]),
            (false, Some(why)) => panic!("record {i} ({}): marked invalid: {why}", kinds[i]),
        }
    }
}
