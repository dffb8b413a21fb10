//! A JSON object written field by field into a byte buffer, for the access log line
//! every request writes. serde's derive escaped each key and dispatched each field at
//! run time: 8% of a proxied request's instructions. Keys here are static and written
//! as they are; values are escaped as serde_json escapes them.

/// One JSON object being written; `finish` closes it.
pub(super) struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    /// Opens an object at the end of `out`.
    pub(super) fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    fn key(&mut self, key: &'static str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A string field.
    pub(super) fn str(&mut self, key: &'static str, value: &str) {
        self.key(key);
        push_string(self.out, value);
    }

    /// A string field, `null` when absent.
    pub(super) fn opt_str(&mut self, key: &'static str, value: Option<&str>) {
        self.key(key);
        match value {
            Some(v) => push_string(self.out, v),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    /// A number field.
    pub(super) fn num(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// A number field, `null` when absent.
    pub(super) fn opt_num(&mut self, key: &'static str, value: Option<u64>) {
        match value {
            Some(v) => self.num(key, v),
            None => {
                self.key(key);
                self.out.extend_from_slice(b"null");
            }
        }
    }

    /// Closes the object.
    pub(super) fn finish(self) {
        self.out.push(b'}');
    }
}

/// `value` as a JSON string: copied as it is when nothing needs escaping (the usual
/// case: methods, hosts, paths, ids), else escaped by serde_json.
fn push_string(out: &mut Vec<u8>, value: &str) {
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, value).is_err() {
        // Writing to a Vec cannot fail; keep the line valid JSON regardless.
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_that_parses_back_to_the_same_values() {
        let tricky = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} é 😀 </script>";
        let mut out = Vec::new();
        let mut o = Object::new(&mut out);
        o.str("plain", "/api/v1?x=1&y=2");
        o.str("tricky", tricky);
        o.opt_str("absent", None);
        o.opt_str("present", Some(""));
        o.num("big", u64::MAX);
        o.num("zero", 0);
        o.opt_num("none", None);
        o.opt_num("some", Some(14));
        o.finish();
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "plain": "/api/v1?x=1&y=2", "tricky": tricky, "absent": null, "present": "",
                "big": u64::MAX, "zero": 0, "none": null, "some": 14,
            })
        );
        assert!(std::str::from_utf8(&out).unwrap().starts_with(r#"{"plain":"/api/v1?x=1&y=2","tricky":"quote \""#));
    }
}
