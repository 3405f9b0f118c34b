//! Hub downloads against a local HTTP server on 127.0.0.1 standing in for `HF_ENDPOINT`: the
//! hub's own file names and headers (ETag / X-Linked-Etag, X-Repo-Commit, Content-Range), a
//! relative redirect from a branch to its commit, an absolute redirect of the weights to a
//! "CDN" path, a token required on the hub's paths, one transfer cut halfway and resumed, a 404.
//! No process environment is changed: the hub settings are built with `HubEnv::from_vars`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};
use da3::hub::HubEnv;
use da3::{Da3Model, ForwardOptions};

const REPO: &str = "depth-anything/DA3-TINY";
const COMMIT: &str = "4f2a9c1d0b8e7f6a5c4d3e2f1a0b9c8d7e6f5a4b";
const TOKEN: &str = "hf_testtoken123";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-mono")
}

/// What the server saw, for the assertions.
#[derive(Default)]
struct Log {
    /// (method, path, range header, authorization header) per request.
    requests: Vec<(String, String, Option<String>, Option<String>)>,
}

struct Hub {
    port: u16,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
}

struct Files {
    /// file name → (bytes, etag)
    files: HashMap<String, (Vec<u8>, String)>,
    /// Cut the first full transfer of the weights after half of its bytes.
    cut_once: AtomicBool,
    cuts: AtomicUsize,
}

fn etag_of(bytes: &[u8]) -> String {
    // Any stable string will do for the cache (the hub sends the sha256 of LFS files).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:016x}", bytes.len())
}

fn parse_range(r: Option<&str>, len: usize) -> (usize, usize) {
    let Some(spec) = r.and_then(|r| r.strip_prefix("bytes=")) else {
        return (0, len.saturating_sub(1));
    };
    let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
    let a: usize = a.parse().unwrap_or(0);
    let b: usize = b.parse().unwrap_or(len - 1).min(len - 1);
    (a, b)
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

fn serve_one(mut s: TcpStream, files: &Files, log: &Mutex<Log>, port: u16, need_token: bool) {
    let mut reader = BufReader::new(s.try_clone().expect("clone stream"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut hdr = HashMap::new();
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).is_err() || l.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            hdr.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = hdr.get("range").cloned();
    let auth = hdr.get("authorization").cloned();
    log.lock()
        .unwrap()
        .requests
        .push((method, path.clone(), range.clone(), auth.clone()));

    // The "CDN": signed URLs, no token needed.
    if let Some(blob) = path.strip_prefix("/cdn/") {
        let blob = blob.split('?').next().unwrap_or("");
        let Some((bytes, _)) = files.files.values().find(|(_, e)| e == blob) else {
            return respond(&mut s, "404 Not Found", &[], b"no such blob");
        };
        let (a, b) = parse_range(range.as_deref(), bytes.len());
        let body = &bytes[a..=b];
        let headers = vec![(
            "Content-Range".to_string(),
            format!("bytes {a}-{b}/{}", bytes.len()),
        )];
        if a == 0 && body.len() > 1 && files.cut_once.swap(false, Ordering::SeqCst) {
            // Announce the whole body, send half of it, hang up.
            files.cuts.fetch_add(1, Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nConnection: close\r\nContent-Range: bytes \
                 {a}-{b}/{}\r\nContent-Length: {}\r\n\r\n",
                bytes.len(),
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body[..body.len() / 2]);
            let _ = s.flush();
            return;
        }
        return respond(&mut s, "206 Partial Content", &headers, body);
    }

    // The hub: /{owner}/{name}/resolve/{revision}/{file}
    let rest = path.strip_prefix(&format!("/{REPO}/resolve/"));
    let Some((rev, file)) = rest.and_then(|r| r.split_once('/')) else {
        return respond(
            &mut s,
            "404 Not Found",
            &[("X-Error-Code".into(), "RepoNotFound".into())],
            b"Repository not found",
        );
    };
    if need_token && auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return respond(&mut s, "401 Unauthorized", &[], b"Invalid credentials");
    }
    if rev == "main" {
        // A branch: relative redirect to the commit, as the hub does for renamed revisions.
        return respond(
            &mut s,
            "307 Temporary Redirect",
            &[
                (
                    "Location".into(),
                    format!("/{REPO}/resolve/{COMMIT}/{file}"),
                ),
                ("X-Repo-Commit".into(), COMMIT.into()),
            ],
            b"",
        );
    }
    let Some((bytes, etag)) = files.files.get(file) else {
        return respond(
            &mut s,
            "404 Not Found",
            &[
                ("X-Error-Code".into(), "EntryNotFound".into()),
                ("X-Repo-Commit".into(), COMMIT.into()),
            ],
            b"Entry not found",
        );
    };
    if file.ends_with(".safetensors") {
        // LFS file: absolute redirect to the CDN, the etag in X-Linked-Etag.
        return respond(
            &mut s,
            "302 Found",
            &[
                (
                    "Location".into(),
                    format!("http://127.0.0.1:{port}/cdn/{etag}?X-Amz-Signature=abc"),
                ),
                ("X-Repo-Commit".into(), COMMIT.into()),
                ("X-Linked-Etag".into(), format!("\"{etag}\"")),
                ("X-Linked-Size".into(), bytes.len().to_string()),
                ("ETag".into(), "\"pointer-etag\"".into()),
            ],
            b"",
        );
    }
    let (a, b) = parse_range(range.as_deref(), bytes.len());
    respond(
        &mut s,
        "206 Partial Content",
        &[
            ("ETag".into(), format!("\"{etag}\"")),
            ("X-Repo-Commit".into(), COMMIT.into()),
            (
                "Content-Range".into(),
                format!("bytes {a}-{b}/{}", bytes.len()),
            ),
        ],
        &bytes[a..=b],
    );
}

impl Hub {
    fn start(need_token: bool, cut_once: bool) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let mut files = HashMap::new();
        for f in ["config.json", "model.safetensors"] {
            let bytes = std::fs::read(fixture().join(f)).expect("fixture file");
            let etag = etag_of(&bytes);
            files.insert(f.to_string(), (bytes, etag));
        }
        let files = Arc::new(Files {
            files,
            cut_once: AtomicBool::new(cut_once),
            cuts: AtomicUsize::new(0),
        });
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, s2) = (log.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            // Bounded: the server stops when the test drops it, or after 60 s.
            let t0 = std::time::Instant::now();
            while !s2.load(Ordering::SeqCst) && t0.elapsed().as_secs() < 60 {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let (f, l) = (files.clone(), l2.clone());
                        std::thread::spawn(move || serve_one(s, &f, &l, port, need_token));
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        Hub { port, log, stop }
    }

    fn env(&self, cache: &Path, token: Option<&str>) -> HubEnv {
        let vars: HashMap<&str, String> = [
            ("HF_ENDPOINT", format!("http://127.0.0.1:{}/", self.port)),
            ("HF_HUB_CACHE", cache.display().to_string()),
            ("HF_HUB_DOWNLOAD_RETRIES", "2".to_string()),
            ("HF_TOKEN", token.unwrap_or("").to_string()),
            ("HOME", cache.display().to_string()),
        ]
        .into_iter()
        .collect();
        HubEnv::from_vars(|k| vars.get(k).cloned()).expect("hub env")
    }

    fn requests(&self) -> Vec<(String, String, Option<String>, Option<String>)> {
        self.log.lock().unwrap().requests.clone()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn temp_cache(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("da3-hub-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn downloads_with_token_redirects_and_resume_then_loads_offline() {
    let hub = Hub::start(true, true);
    let cache = temp_cache("dl");
    let env = hub.env(&cache, Some(TOKEN));
    assert_eq!(env.endpoint, format!("http://127.0.0.1:{}", hub.port));

    let cfg = env.file(REPO, None, "config.json").expect("config.json");
    let weights = env
        .file(REPO, None, "model.safetensors")
        .expect("model.safetensors");
    // Python's layout: blobs by etag, snapshots/<commit>/<file> links, refs/main = commit.
    let repo_dir = cache.join("models--depth-anything--DA3-TINY");
    assert_eq!(
        weights,
        repo_dir
            .join("snapshots")
            .join(COMMIT)
            .join("model.safetensors")
    );
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    for (got, f) in [(&cfg, "config.json"), (&weights, "model.safetensors")] {
        assert_eq!(
            std::fs::read(got).unwrap(),
            std::fs::read(fixture().join(f)).unwrap(),
            "{f} bytes"
        );
    }
    let reqs = hub.requests();
    // The token went to the hub's own paths.
    assert!(reqs
        .iter()
        .filter(|r| r.1.contains("/resolve/"))
        .all(|r| r.3.as_deref() == Some(&format!("Bearer {TOKEN}") as &str)));
    // The cut transfer was resumed from where it stopped, not restarted.
    let cdn: Vec<_> = reqs
        .iter()
        .filter(|r| r.1.starts_with("/cdn/") && r.2.as_deref() != Some("bytes=0-0"))
        .collect();
    assert!(
        cdn.len() >= 2,
        "expected a cut and a resumed transfer: {cdn:?}"
    );
    let resumed_from: usize = cdn[1]
        .2
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .expect("range of the resumed request");
    let size = std::fs::metadata(fixture().join("model.safetensors"))
        .unwrap()
        .len() as usize;
    assert!(
        resumed_from > 0 && resumed_from < size,
        "resumed at {resumed_from} of {size}"
    );
    println!(
        "hub download: {} requests, weights cut once and resumed at byte {resumed_from} of {size}",
        reqs.len()
    );

    // Second time: from the cache, no request at all.
    let n = hub.requests().len();
    env.file(REPO, None, "model.safetensors").unwrap();
    assert_eq!(hub.requests().len(), n);

    // Offline, by the pinned commit as well as by branch.
    let mut off = env.clone();
    off.offline = true;
    off.endpoint = "http://127.0.0.1:9".into();
    assert_eq!(
        off.file(REPO, Some(COMMIT), "model.safetensors").unwrap(),
        weights
    );
    let m = Da3Model::load_with_config(
        &off.file(REPO, Some(COMMIT), "model.safetensors").unwrap(),
        da3::weights::read_config(&da3::weights::CheckpointFiles {
            config: Some(cfg.clone()),
            weights: weights.clone(),
        })
        .unwrap(),
        &Device::Cpu,
        DType::F32,
    )
    .expect("load the downloaded checkpoint");
    let cases =
        candle_core::safetensors::load(fixture().join("cases.safetensors"), &Device::Cpu).unwrap();
    let out = m
        .forward(&cases["m1.input"], &ForwardOptions::default())
        .unwrap();
    assert_eq!(out.depth.dims(), cases["m1.out.depth"].dims());
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn missing_file_and_missing_token_are_clear_errors() {
    let hub = Hub::start(true, false);
    let cache = temp_cache("err");
    let env = hub.env(&cache, Some(TOKEN));
    let e = env
        .file(REPO, None, "pytorch_model.bin")
        .expect_err("no such file")
        .to_string();
    assert!(
        e.contains("404") && e.contains(REPO) && e.contains("pytorch_model.bin"),
        "{e}"
    );
    let e = hub
        .env(&cache, None)
        .file(REPO, None, "config.json")
        .expect_err("no token")
        .to_string();
    assert!(e.contains("401") && e.contains("HF_TOKEN"), "{e}");
    // Errors are not retried: one request per failing call (plus none for the cache).
    let n = hub.requests().len();
    assert!(n <= 4, "{n} requests for two failing calls");
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn python_layout_cache_with_a_pinned_commit_and_no_ref_file() {
    // What Python leaves after `from_pretrained(repo, revision=<commit>)`: a snapshot folder
    // named by the commit, no refs/<commit>.
    let cache = temp_cache("pinned");
    let snap = cache
        .join("models--depth-anything--DA3-TINY/snapshots")
        .join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join(f), snap.join(f)).unwrap();
    }
    let vars: HashMap<&str, String> = [
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_HUB_OFFLINE", "1".to_string()),
    ]
    .into_iter()
    .collect();
    let env = HubEnv::from_vars(|k| vars.get(k).cloned()).unwrap();
    assert_eq!(
        env.file(REPO, Some(COMMIT), "model.safetensors").unwrap(),
        snap.join("model.safetensors")
    );
    let e = env
        .file(REPO, None, "model.safetensors")
        .expect_err("main has no ref")
        .to_string();
    assert!(e.contains("offline") && e.contains(REPO), "{e}");
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn settings_are_read_like_huggingface_hub() {
    let from = |pairs: &[(&str, &str)]| {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubEnv::from_vars(|k| m.get(k).cloned()).unwrap()
    };
    let e = from(&[("HOME", "/home/u")]);
    assert_eq!(e.cache, PathBuf::from("/home/u/.cache/huggingface/hub"));
    assert_eq!(e.endpoint, "https://huggingface.co");
    assert!(!e.offline);
    let e = from(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/x")]);
    assert_eq!(e.cache, PathBuf::from("/x/huggingface/hub"));
    let e = from(&[("HF_HOME", "/h"), ("XDG_CACHE_HOME", "/x")]);
    assert_eq!(e.cache, PathBuf::from("/h/hub"));
    let e = from(&[("HF_HOME", "/h"), ("HUGGINGFACE_HUB_CACHE", "/old")]);
    assert_eq!(e.cache, PathBuf::from("/old"));
    let e = from(&[("HF_HUB_CACHE", "/new"), ("HUGGINGFACE_HUB_CACHE", "/old")]);
    assert_eq!(e.cache, PathBuf::from("/new"));
    let e = from(&[("HF_ENDPOINT", "https://hf-mirror.example/")]);
    assert_eq!(e.endpoint, "https://hf-mirror.example");
    for (v, off) in [
        ("1", true),
        ("ON", true),
        ("yes", true),
        ("True", true),
        ("0", false),
        ("false", false),
        ("no", false),
        ("", false),
    ] {
        assert_eq!(
            from(&[("HF_HUB_OFFLINE", v)]).offline,
            off,
            "HF_HUB_OFFLINE={v}"
        );
        assert_eq!(
            from(&[("TRANSFORMERS_OFFLINE", v)]).offline,
            off,
            "TRANSFORMERS_OFFLINE={v}"
        );
    }
    // Token: HF_TOKEN, else HF_TOKEN_PATH, else $HF_HOME/token.
    let dir = temp_cache("token");
    std::fs::write(dir.join("token"), "hf_fromhome\n").unwrap();
    std::fs::write(dir.join("other"), "hf_frompath").unwrap();
    let home = dir.display().to_string();
    let other = dir.join("other").display().to_string();
    assert_eq!(
        from(&[("HF_HOME", &home)]).token.as_deref(),
        Some("hf_fromhome")
    );
    assert_eq!(
        from(&[("HF_HOME", &home), ("HF_TOKEN_PATH", &other)])
            .token
            .as_deref(),
        Some("hf_frompath")
    );
    assert_eq!(
        from(&[("HF_HOME", &home), ("HF_TOKEN", "hf_env")])
            .token
            .as_deref(),
        Some("hf_env")
    );
    assert!(HubEnv::from_vars(|k| (k == "HF_HUB_DOWNLOAD_RETRIES").then(|| "x".into())).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
