//! Reads what the gateway sends a trace collector: a minimal protobuf reader for
//! OTLP `ExportTraceServiceRequest`, enough to check spans in tests.

/// One decoded span.
#[derive(Debug, Clone, Default)]
pub struct Span {
    /// Trace id, hex.
    pub trace_id: String,
    /// Span id, hex.
    pub span_id: String,
    /// Parent span id, hex (empty for a root).
    pub parent: String,
    /// Name.
    pub name: String,
    /// 2 server, 3 client.
    pub kind: u64,
    /// String attributes.
    pub attributes: Vec<(String, String)>,
    /// Status code (2 = error).
    pub status: u64,
}

impl Span {
    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn fields(mut buf: &[u8]) -> Vec<(u64, Field<'_>)> {
    fn varint(buf: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = buf[0];
            *buf = &buf[1..];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf);
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut buf)),
            1 => {
                buf = &buf[8..];
                Field::Fixed
            }
            2 => {
                let n = varint(&mut buf) as usize;
                let (data, rest) = buf.split_at(n);
                buf = rest;
                Field::Bytes(data)
            }
            5 => {
                buf = &buf[4..];
                Field::Fixed
            }
            w => panic!("unexpected wire type {w}"),
        };
        out.push((key >> 3, field));
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn nested(buf: &[u8], field: u64) -> Vec<&[u8]> {
    fields(buf)
        .into_iter()
        .filter_map(|(f, v)| match v {
            Field::Bytes(b) if f == field => Some(b),
            _ => None,
        })
        .collect()
}

/// The spans of one export request, and the resource's `service.name`.
pub fn decode(body: &[u8]) -> (String, Vec<Span>) {
    let mut service = String::new();
    let mut spans = Vec::new();
    for rs in nested(body, 1) {
        for resource in nested(rs, 1) {
            for kv in nested(resource, 1) {
                let (k, v) = key_value(kv);
                if k == "service.name" {
                    service = v;
                }
            }
        }
        for ss in nested(rs, 2) {
            for raw in nested(ss, 2) {
                let mut s = Span::default();
                for (f, v) in fields(raw) {
                    match (f, v) {
                        (1, Field::Bytes(b)) => s.trace_id = hex(b),
                        (2, Field::Bytes(b)) => s.span_id = hex(b),
                        (4, Field::Bytes(b)) => s.parent = hex(b),
                        (5, Field::Bytes(b)) => s.name = String::from_utf8_lossy(b).into_owned(),
                        (6, Field::Varint(k)) => s.kind = k,
                        (9, Field::Bytes(b)) => s.attributes.push(key_value(b)),
                        (15, Field::Bytes(b)) => {
                            for (f, v) in fields(b) {
                                if let (3, Field::Varint(c)) = (f, v) {
                                    s.status = c;
                                }
                            }
                        }
                        _ => {}
                    }
                }
                spans.push(s);
            }
        }
    }
    (service, spans)
}

fn key_value(buf: &[u8]) -> (String, String) {
    let key = nested(buf, 1).first().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    let value = nested(buf, 2)
        .first()
        .and_then(|any| nested(any, 1).first().map(|b| String::from_utf8_lossy(b).into_owned()))
        .unwrap_or_default();
    (key, value)
}
