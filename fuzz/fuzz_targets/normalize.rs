//! Path normalization in every mode: no panic, the shortcut for normal paths agrees
//! with the full rewrite, and BASE/MERGE_SLASHES are idempotent (normalizing a
//! normalized path changes nothing), the property the authorization engine relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wicket::security::normalize::Normalization;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    for n in
        [Normalization::None, Normalization::Base, Normalization::MergeSlashes, Normalization::DecodeAndMergeSlashes]
    {
        let mode = format!("{n:?}");
        assert_eq!(n.apply(path), n.rewrite(path), "{mode}: {path:?}");
        let Ok(Some(once)) = n.apply(path) else { continue };
        if matches!(n, Normalization::Base | Normalization::MergeSlashes) {
            let twice = n.apply(&once).expect("a normalized path stays valid");
            assert!(
                twice.is_none() || twice.as_deref() == Some(once.as_str()),
                "{mode}: {path:?} → {once:?} → {twice:?}"
            );
        }
    }
});
