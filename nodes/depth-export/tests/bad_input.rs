//! Bad input to depth-export, through `integration_testing`: hundreds of
//! broken depth, confidence, camera, point and image messages (seeded, from
//! `da3_testkit::bad`) interleaved with complete good frames. Every broken
//! message must be rejected, logged and counted (`Exporter::rejected`, in the
//! final summary line); every good frame must still be written, with its own
//! values; the node must end without error.

use da3_io::png16::depth_to_u16;
use da3_msg::{
    CameraMsg, DepthKind, DepthMap, Encoding, FrameInfo, ImageFrame, Intrinsics, PointCloud, Pose,
};
use da3_testkit::bad::{CameraKit, DepthKit, ImageKit, PointsKit, NEW_ENCODINGS};
use da3_testkit::harness::{catch_crash, Events, Figures};
use da3_testkit::Rng;
use depth_export::formats::parse_formats;
use depth_export::Config;

const W: u32 = 8;
const H: u32 = 6;
const N_BAD: usize = 250;
const GOOD_EVERY: usize = 40;

fn info(id: u64) -> FrameInfo {
    FrameInfo {
        frame_id: Some(id),
        stamp_ns: Some(1_000 + id),
        camera: Some("cam".into()),
        last: false,
    }
}

fn depth(kind: DepthKind, id: u64) -> DepthMap {
    DepthMap {
        kind,
        width: W,
        height: H,
        values: (0..W * H)
            .map(|i| 1.0 + 0.1 * i as f32 + id as f32)
            .collect(),
        info: info(id),
        intrinsics: Some(Intrinsics {
            fx: 10.0,
            fy: 10.0,
            cx: 3.5,
            cy: 2.5,
        }),
        pose: Some(Pose {
            position: [0.0, 0.0, -(id as f64)],
            orientation: [0.0, 0.0, 0.0, 1.0],
        }),
        is_metric: true,
    }
}

fn camera(id: u64) -> CameraMsg {
    CameraMsg {
        extrinsics: [
            1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, id as f64,
        ],
        intrinsics: [10.0, 0.0, 3.5, 0.0, 10.0, 2.5, 0.0, 0.0, 1.0],
        width: W,
        height: H,
        info: info(id),
        is_metric: true,
    }
}

fn image(id: u64) -> ImageFrame {
    let mut f = ImageFrame::rgb8(
        W,
        H,
        (0..W * H * 3)
            .map(|i| (i * 7 + id as u32 * 40) as u8)
            .collect(),
    );
    f.info = info(id);
    f
}

#[test]
fn bad_inputs_are_rejected_counted_and_good_frames_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let payloads = dir.path().join("payloads");
    std::fs::create_dir_all(&payloads).unwrap();
    let mut rng = Rng::new(0xDA3_0002);
    let mut images = ImageKit::new(image(0), da3_msg::DecodeLimits::default().max_pixels).unwrap();
    let mut depths = DepthKit {
        good: depth(DepthKind::Depth, 0),
    };
    let mut confs = DepthKit {
        good: depth(DepthKind::Confidence, 0),
    };
    let mut cameras = CameraKit { good: camera(0) };
    let mut points = PointsKit {
        good: PointCloud {
            xyz: vec![[1.0, 2.0, 3.0]; 5],
            rgb: vec![[1, 2, 3]; 5],
            info: info(0),
            is_metric: true,
        },
    };
    // Source images in the colour encodings of dora's camera nodes too.
    let encodings = [
        Encoding::Rgb8,
        Encoding::Png,
        Encoding::Jpeg,
        Encoding::Yuv420,
        Encoding::Bgra8,
        Encoding::Webp,
        Encoding::Bmp,
    ];
    // The first image cases: one truncated frame of each newer encoding
    // (mono16: a truncated depth image).
    let mut truncated: Vec<Encoding> = NEW_ENCODINGS.to_vec();
    let mut events = Events::new(&payloads);
    let mut good_ids = Vec::new();
    let mut n_bad = 0u64;
    let mut kinds = std::collections::BTreeMap::<&str, u32>::new();
    let mut t = 0.0;
    for i in 0..=N_BAD {
        if i % GOOD_EVERY == 0 {
            let id = good_ids.len() as u64;
            let img = ImageKit::new(image(id), u64::MAX)
                .unwrap()
                .encoded(encodings[id as usize % encodings.len()]);
            for (input, (a, p)) in [
                ("image", img.to_message()),
                ("camera", camera(id).to_message()),
                ("confidence", depth(DepthKind::Confidence, id).to_message()),
                ("depth", depth(DepthKind::Depth, id).to_message()),
            ] {
                events.input(t, input, &a, &p).unwrap();
            }
            good_ids.push(id);
        }
        if i == N_BAD {
            break;
        }
        // Broken messages claim the frame numbers of the good frames around them.
        let id = good_ids.len() as u64 - (rng.below(2));
        let (input, case) = match rng.below(5) {
            0 => {
                depths.good.info.frame_id = Some(id);
                ("depth", depths.bad(&mut rng))
            }
            1 => {
                confs.good.info.frame_id = Some(id);
                ("confidence", confs.bad(&mut rng))
            }
            2 => {
                cameras.good.info.frame_id = Some(id);
                ("camera", cameras.bad(&mut rng))
            }
            3 => {
                points.good.info.frame_id = Some(id);
                ("points", points.bad(&mut rng))
            }
            _ => {
                images.good.info.frame_id = Some(id);
                match truncated.pop() {
                    Some(enc) => ("image", images.truncated(enc, &mut rng)),
                    None => ("image", images.bad(&mut rng)),
                }
            }
        };
        *kinds.entry(case.kind).or_default() += 1;
        events.input(t, input, &case.array, &case.params).unwrap();
        n_bad += 1;
        t += 0.0005;
    }
    let tried = events.len() as u64;
    let inputs = ["depth", "confidence", "camera", "image"];
    let (_node, mut stream, _rx) = events
        .start("export", &[&inputs[..], &["points"]].concat(), &[])
        .unwrap();
    let cfg = Config {
        out_dir: out_dir.clone(),
        formats: parse_formats("png16,ply,colmap").unwrap(),
        every: 1,
        colmap_every: 1000,
        conf_percentile: 0.0,
        colmap_max_points: 10_000,
    };
    let run = catch_crash(|| {
        depth_export::run(
            &mut stream,
            inputs.iter().map(|s| s.to_string()).collect(),
            "export",
            cfg,
        )
    });
    let (rejected, written, errors) = match &run {
        Ok(e) => (e.rejected, e.written, e.errors),
        Err(_) => (0, 0, 0),
    };
    Figures {
        node: "depth-export",
        tried,
        bad: n_bad,
        rejected,
        good: good_ids.len() as u64,
        good_out: written,
        crashed: run.is_err() as u64,
    }
    .print();
    println!("broken message kinds: {kinds:?}");
    run.expect("depth-export ends without error");
    assert!(
        truncated.is_empty(),
        "every newer encoding was truncated once"
    );
    assert_eq!(rejected, n_bad, "every broken message rejected and counted");
    assert_eq!(errors, 0, "no file failed");
    assert_eq!(written, good_ids.len() as u64, "every good frame written");

    // Each good frame's files hold that frame's values.
    for &id in &good_ids {
        let stem = format!("cam_{id:06}");
        let png = image::open(out_dir.join(format!("{stem}.png")))
            .unwrap_or_else(|e| panic!("{stem}.png: {e}"))
            .into_luma16();
        let want = depth_to_u16(&depth(DepthKind::Depth, id).values);
        assert_eq!(png.into_raw(), want, "{stem}: depth values");
        let ply = std::fs::read(out_dir.join(format!("{stem}.ply"))).unwrap();
        let (xyz, _) = da3_io::ply::read_ply(&ply).unwrap();
        assert_eq!(xyz.len(), (W * H) as usize, "{stem}: one point per pixel");
        // The camera message puts this frame's camera at z = -id, and its first
        // pixel's depth is 1 + id: that point lands at z = 1.
        let z0 = xyz[0][2];
        assert!((z0 - 1.0).abs() < 1e-4, "{stem}: z {z0}");
    }
    let images_txt = std::fs::read_to_string(out_dir.join("colmap/images.txt")).unwrap();
    let listed = depth_export::colmap::parse_images_txt(&images_txt).unwrap();
    assert_eq!(
        listed.len(),
        good_ids.len(),
        "COLMAP lists every good frame"
    );
}
