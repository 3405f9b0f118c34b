//! Hugging Face hub access, configured from the environment the way Python's
//! `huggingface_hub` reads it, so a cache filled by Python serves us and the other way round.
//!
//! | variable | meaning (as in `huggingface_hub`) |
//! |---|---|
//! | `HF_ENDPOINT` | hub or mirror URL (default `https://huggingface.co`) |
//! | `HF_HOME` | base folder (default `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`) |
//! | `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE` | the cache (default `$HF_HOME/hub`) |
//! | `HF_TOKEN` | access token; else the file `HF_TOKEN_PATH` (default `$HF_HOME/token`) |
//! | `HF_HUB_OFFLINE`, `TRANSFORMERS_OFFLINE` | `1`/`ON`/`YES`/`TRUE` (any case): never touch the network |
//! | `HF_HUB_DOWNLOAD_RETRIES` | retries of a broken transfer (ours; default 5), each resumed where it stopped |
//!
//! Files are looked up in the cache first (`refs/<revision>` → `snapshots/<commit>/<file>`, or
//! `snapshots/<revision>/<file>` directly when the revision is a commit hash, as Python stores a
//! pinned commit without a ref file); only a file missing there is downloaded, through the
//! `hf-hub` crate (ETag / commit headers, redirects, resumable `.incomplete` blobs).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use eyre::{bail, eyre, Result};

/// Default hub endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Default number of retries of a broken download.
pub const DEFAULT_RETRIES: usize = 5;

/// The hub settings of this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubEnv {
    /// Hub URL without a trailing slash.
    pub endpoint: String,
    /// The cache folder (`.../hub`).
    pub cache: PathBuf,
    /// Access token sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// No network access at all.
    pub offline: bool,
    /// Retries of a broken transfer.
    pub retries: usize,
}

/// `huggingface_hub`'s `_is_true`.
fn is_true(v: Option<&str>) -> bool {
    v.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

impl HubEnv {
    /// Read the settings from the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Read the settings through `var` (a variable's value, `None` when unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let set = |k: &str| var(k).filter(|v| !v.is_empty());
        let home_dir = || set("HOME").map(PathBuf::from).unwrap_or_default();
        let hf_home = set("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            set("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home_dir().join(".cache"))
                .join("huggingface")
        });
        let cache = set("HF_HUB_CACHE")
            .or_else(|| set("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = match set("HF_TOKEN").or_else(|| set("HUGGING_FACE_HUB_TOKEN")) {
            Some(t) => Some(t.trim().to_string()),
            None => {
                let path = set("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| hf_home.join("token"));
                std::fs::read_to_string(&path)
                    .ok()
                    .map(|t| t.trim().to_string())
            }
        }
        .filter(|t| !t.is_empty());
        let offline = is_true(set("HF_HUB_OFFLINE").as_deref())
            || is_true(set("TRANSFORMERS_OFFLINE").as_deref());
        let retries = match set("HF_HUB_DOWNLOAD_RETRIES") {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| eyre!("HF_HUB_DOWNLOAD_RETRIES={v:?} is not a count"))?,
            None => DEFAULT_RETRIES,
        };
        let endpoint = set("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        Ok(Self {
            endpoint,
            cache,
            token,
            offline,
            retries,
        })
    }

    /// The cache folder of a model repo (`models--owner--name`).
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// A cached file of `repo` at `revision` (branch, tag or commit), without network.
    pub fn cached(&self, repo: &str, revision: &str, file: &str) -> Option<PathBuf> {
        let dir = self.repo_dir(repo);
        let commit = std::fs::read_to_string(dir.join("refs").join(revision))
            .ok()
            .map(|c| c.trim().to_string())
            .or_else(|| is_commit_hash(revision).then(|| revision.to_string()))?;
        let p = dir.join("snapshots").join(commit).join(file);
        p.is_file().then_some(p)
    }

    /// A file of a hub model repo: from the cache when it is there, else downloaded into it.
    pub fn file(&self, repo: &str, revision: Option<&str>, file: &str) -> Result<PathBuf> {
        if repo.split('/').filter(|s| !s.is_empty()).count() != 2 {
            bail!("hub id {repo:?} is not owner/name");
        }
        let rev = revision.unwrap_or("main");
        if let Some(p) = self.cached(repo, rev, file) {
            return Ok(p);
        }
        if self.offline {
            bail!(
                "{file} of hub repo {repo} (revision {rev}) is not in the cache {} and the hub is \
                 offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)",
                self.cache.display()
            );
        }
        self.download(repo, rev, file)
    }

    fn download(&self, repo: &str, rev: &str, file: &str) -> Result<PathBuf> {
        use hf_hub::api::sync::{ApiBuilder, ApiError};
        use hf_hub::{Cache, Repo, RepoType};
        let api = ApiBuilder::from_cache(Cache::new(self.cache.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_retries(self.retries)
            .with_progress(false)
            .build()
            .map_err(|e| eyre!("hf-hub client: {e}"))?;
        let api_repo = api.repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            rev.to_string(),
        ));
        let url = api_repo.url(file);
        tracing::info!("downloading {file} of {repo} (revision {rev}) from {url}");
        // A broken transfer is resumed by hf-hub itself (its `.incomplete` blob, `retries`
        // times); errors before the transfer (the metadata request) are retried here, and the
        // next attempt resumes the blob too.
        let mut attempt = 0;
        loop {
            let err = match api_repo.download_with_progress(file, Progress::new(file)) {
                Ok(p) => return Ok(p),
                Err(e) => e,
            };
            let status = match &err {
                ApiError::RequestError(r) => match r.as_ref() {
                    ureq::Error::Status(code, _) => Some(*code),
                    ureq::Error::Transport(_) => None,
                },
                _ => None,
            };
            match status {
                Some(404) => bail!(
                    "hub repo {repo} has no file {file} at revision {rev} (HTTP 404 from {url}); \
                     check the model id, the revision and HF_ENDPOINT"
                ),
                Some(code @ (401 | 403)) => bail!(
                    "hub repo {repo}: access to {file} refused (HTTP {code} from {url}); the repo \
                     may be private, gated or missing: set HF_TOKEN (or log in with \
                     `huggingface-cli login`)"
                ),
                Some(code) if (400..500).contains(&code) && code != 429 => {
                    bail!("downloading {file} from hub repo {repo}: HTTP {code} from {url}")
                }
                _ if attempt < self.retries => {
                    attempt += 1;
                    let wait = Duration::from_millis(250 << attempt.min(5));
                    tracing::warn!(
                        "downloading {file} from hub repo {repo}: {err}; retry {attempt}/{} in {:?}",
                        self.retries,
                        wait
                    );
                    std::thread::sleep(wait);
                }
                _ => {
                    return Err(eyre!(
                        "downloading {file} from hub repo {repo} ({url}) failed after {} \
                         attempts: {err}",
                        attempt + 1
                    ))
                }
            }
        }
    }
}

/// Whether `s` is a full commit hash (40 hex digits).
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Download progress: a bar on a terminal, else a log line every few seconds and at the end.
struct Progress {
    file: String,
    total: usize,
    done: usize,
    start: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    fn new(file: &str) -> Self {
        let now = Instant::now();
        Self {
            file: file.to_string(),
            total: 0,
            done: 0,
            start: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn line(&self) -> String {
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{}: {:.1} / {:.1} MiB ({:.0}%), {:.1} MiB/s",
            self.file,
            mib(self.done),
            mib(self.total),
            100.0 * self.done as f64 / self.total.max(1) as f64,
            mib(self.done) / secs
        )
    }
}

impl hf_hub::api::Progress for Progress {
    fn init(&mut self, size: usize, _filename: &str) {
        self.total = size;
        self.done = 0;
    }
    fn update(&mut self, size: usize) {
        self.done += size;
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            if self.tty {
                eprint!("\r{}\x1b[K", self.line());
            } else {
                tracing::info!("{}", self.line());
            }
        }
    }
    fn finish(&mut self) {
        if self.tty {
            eprintln!("\r{}\x1b[K", self.line());
        } else {
            tracing::info!("{}", self.line());
        }
    }
}
