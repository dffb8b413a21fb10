//! Path normalization (mesh config `pathNormalization`): routing, authorization and the
//! upstream all see the same normalized path, so `/admin/../x`, `/%61dmin` or
//! `//admin` cannot slip past a rule written for `/admin`.

use crate::config::NormalizationType;

/// Istio's normalization modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Normalization {
    /// Path used as received.
    None,
    /// RFC 3986 dot segments, unreserved percent-decoding, `\` → `/` (Istio's default).
    #[default]
    Base,
    /// BASE plus merging repeated slashes (the gateway's default).
    MergeSlashes,
    /// `%2F`/`%5C` decoded first, then MERGE_SLASHES.
    DecodeAndMergeSlashes,
}

/// Why a path is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%00` anywhere.
    #[error("path contains an encoded NUL")]
    Nul,
    /// A malformed percent escape.
    #[error("path contains a malformed percent escape")]
    BadEscape,
}

impl Normalization {
    /// Parses the mesh config value; unset and `DEFAULT` give `default` (Istio's is
    /// BASE; a gateway at the edge uses MERGE_SLASHES, Envoy's edge recommendation).
    pub fn from_config(value: Option<NormalizationType>, default: Self) -> Self {
        match value {
            None | Some(NormalizationType::Default) => default,
            Some(NormalizationType::Base) => Self::Base,
            Some(NormalizationType::None) => Self::None,
            Some(NormalizationType::MergeSlashes) => Self::MergeSlashes,
            Some(NormalizationType::DecodeAndMergeSlashes) => Self::DecodeAndMergeSlashes,
        }
    }

    /// Normalizes `path` (without query). `Ok(None)` means unchanged.
    pub fn apply(self, path: &str) -> Result<Option<String>, PathError> {
        // Most paths are normal already: nothing to decode, no backslash, no dot
        // segment, no doubled slash. Seeing that spares three allocations a request.
        let merge = matches!(self, Self::MergeSlashes | Self::DecodeAndMergeSlashes);
        let work = !path.starts_with('/')
            || path.bytes().any(|b| b == b'%' || b == b'\\')
            || path.contains("/.")
            || (merge && path.contains("//"));
        if !work {
            return Ok(None);
        }
        self.rewrite(path)
    }

    /// `apply` without its shortcut for normal paths: every step, on any path. The
    /// fuzz target checks that the two agree.
    pub fn rewrite(self, path: &str) -> Result<Option<String>, PathError> {
        if path.contains("%00") {
            return Err(PathError::Nul);
        }
        if self == Self::None {
            return Ok(None);
        }
        let decoded = decode(path, self == Self::DecodeAndMergeSlashes)?;
        let mut out = remove_dot_segments(&decoded.replace('\\', "/"));
        if matches!(self, Self::MergeSlashes | Self::DecodeAndMergeSlashes) {
            while out.contains("//") {
                out = out.replace("//", "/");
            }
        }
        Ok((out != path).then_some(out))
    }
}

/// Decodes percent escapes of unreserved characters once (and of `/`, `\` when asked);
/// other escapes stay as written (uppercased hex is not forced).
fn decode(path: &str, slashes: bool) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let value = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(PathError::BadEscape)?;
            let unreserved = value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~');
            if unreserved || (slashes && matches!(value, b'/' | b'\\')) {
                out.push(value);
            } else {
                out.extend_from_slice(&bytes[i..i + 3]);
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError::BadEscape)
}

/// RFC 3986 §5.2.4 on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *seg {
            "." => {
                if last {
                    segments.push("");
                }
            }
            ".." => {
                segments.pop();
                if last {
                    segments.push("");
                }
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(mode: Normalization, p: &str) -> String {
        mode.apply(p).unwrap().unwrap_or_else(|| p.to_string())
    }

    #[test]
    fn base_matches_istio_observations() {
        let b = Normalization::Base;
        assert_eq!(norm(b, "/app/%2E./admin"), "/admin");
        assert_eq!(norm(b, "/xyz%30..//abc"), "/xyz0..//abc");
        assert_eq!(norm(b, "/app/%2f"), "/app/%2f");
        assert_eq!(norm(b, "/admin/../x"), "/x");
        assert_eq!(norm(b, "/%61dmin"), "/admin");
        assert_eq!(norm(b, "/admin/."), "/admin/");
        assert_eq!(norm(b, "/a\\b"), "/a/b");
        assert_eq!(norm(b, "/%252e"), "/%252e");
        assert_eq!(norm(b, "/../../etc"), "/etc");
        assert_eq!(Normalization::Base.apply("/a%00b"), Err(PathError::Nul));
        assert_eq!(Normalization::Base.apply("/a%zz"), Err(PathError::BadEscape));
    }

    #[test]
    fn merge_and_decode_slashes() {
        assert_eq!(norm(Normalization::MergeSlashes, "/app//"), "/app/");
        assert_eq!(norm(Normalization::MergeSlashes, "//admin"), "/admin");
        assert_eq!(norm(Normalization::DecodeAndMergeSlashes, "/app/%2f"), "/app/");
        assert_eq!(norm(Normalization::DecodeAndMergeSlashes, "/app%2f/"), "/app/");
        assert_eq!(norm(Normalization::DecodeAndMergeSlashes, "/%c0%2fadmin"), "/%c0/admin");
        assert_eq!(norm(Normalization::None, "/a/../b"), "/a/../b");
    }

    #[test]
    fn normal_paths_are_left_alone_and_dot_segments_still_found() {
        use Normalization::{Base, DecodeAndMergeSlashes, MergeSlashes};
        for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
            for p in ["/", "/api/v1/items", "/a.b/c..d/e.", "/x-y_z~"] {
                assert_eq!(mode.apply(p), Ok(None), "{mode:?} {p}");
            }
            assert_eq!(norm(mode, "/.well-known/x"), "/.well-known/x");
            assert_eq!(norm(mode, "/a/./b/.."), "/a/");
        }
        assert_eq!(Base.apply("/a//b"), Ok(None));
    }
}
