//! The keys/shapes the network requests equal, exactly, the reference state dict of every
//! published variant (tests/keys/<variant>.tsv), tied aliases included. Nothing is allocated.

use std::collections::BTreeMap;
use std::path::Path;

use da3::{expected_keys, Da3Config};

fn read_tsv(path: &Path) -> BTreeMap<String, (Vec<usize>, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        assert!(cols.len() >= 5, "bad line in {}: {line}", path.display());
        let shape: Vec<usize> = cols[1]
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().expect("shape entry"))
            .collect();
        out.insert(cols[0].to_string(), (shape, cols[4].to_string()));
    }
    out
}

#[test]
fn keys_match_every_published_variant() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/keys")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tsv"))
    {
        let variant = path.file_stem().unwrap().to_string_lossy().to_string();
        let cfg = Da3Config::from_model_name(&variant).expect("known variant");
        let want = read_tsv(&path);
        let got_list = expected_keys(&cfg).expect("expected_keys");
        let got: BTreeMap<String, Vec<usize>> = got_list.iter().cloned().collect();
        assert_eq!(
            got.len(),
            got_list.len(),
            "{variant}: a key was requested twice"
        );
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            missing.is_empty(),
            "{variant}: not requested: {:?}",
            &missing[..missing.len().min(10)]
        );
        assert!(
            extra.is_empty(),
            "{variant}: requested but not in the reference: {:?}",
            &extra[..extra.len().min(10)]
        );
        for (k, (shape, stored)) in &want {
            assert_eq!(&got[k], shape, "{variant}: shape of {k}");
            if let Some(target) = stored.strip_prefix("alias_of:") {
                assert_eq!(
                    da3::weights::alias_target(k).as_deref(),
                    Some(target),
                    "{variant}: alias {k}"
                );
            } else {
                assert_eq!(stored, "yes", "{variant}: {k}");
            }
        }
        let params: usize = want
            .values()
            .filter(|(_, s)| s == "yes")
            .map(|(s, _)| s.iter().product::<usize>())
            .sum();
        println!(
            "{variant}: {} keys ok ({params} stored parameters)",
            want.len()
        );
        n += 1;
    }
    assert_eq!(n, 7, "expected the 7 published variants");
}
