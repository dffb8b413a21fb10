//! Serialized pair maps (proxy-wasm ABI §13): `u32` count, then `(key_len, value_len)`
//! pairs, then each key and value followed by a NUL. Used for header maps, local
//! replies, HTTP calls and map properties.

/// Encodes pairs; an empty list encodes to nothing (the Rust SDK reads 4 bytes from
/// any non-empty buffer, so a one-byte empty map would crash it).
pub(super) fn encode<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let (count, size) = pairs.clone().fold((0usize, 4usize), |(n, s), (k, v)| (n + 1, s + 8 + k.len() + v.len() + 2));
    if count == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Decodes guest input; `None` when the sizes do not fit the buffer. Empty input,
/// one zero byte and a zero count all mean the empty map.
pub(super) fn decode(buf: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if buf.len() <= 1 {
        return buf.iter().all(|b| *b == 0).then(Vec::new);
    }
    let count = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let mut sizes_at = 4usize;
    let mut data_at = 4usize.checked_add(count.checked_mul(8)?)?;
    if data_at > buf.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let k = u32::from_le_bytes(buf[sizes_at..sizes_at + 4].try_into().ok()?) as usize;
        let v = u32::from_le_bytes(buf[sizes_at + 4..sizes_at + 8].try_into().ok()?) as usize;
        sizes_at += 8;
        let key = buf.get(data_at..data_at.checked_add(k)?)?;
        data_at += k + 1;
        let value = buf.get(data_at..data_at.checked_add(v)?)?;
        data_at += v + 1;
        if data_at > buf.len() {
            return None;
        }
        out.push((key, value));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_round_trips() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"bb", b"22")];
        let bytes = encode(pairs.iter().copied());
        assert_eq!(bytes.len(), 30);
        assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
        assert_eq!(&bytes[20..], b"a\x001\x00bb\x0022\x00");
        assert_eq!(decode(&bytes).unwrap(), pairs);
    }

    #[test]
    fn empty_forms_and_hostile_sizes() {
        assert!(encode(std::iter::empty()).is_empty());
        for empty in [&b""[..], b"\0", b"\0\0\0\0"] {
            assert_eq!(decode(empty).unwrap(), vec![]);
        }
        assert!(decode(&[0xff, 0xff, 0xff, 0xff]).is_none());
        let mut lying = encode([(&b"k"[..], &b"v"[..])].into_iter());
        lying[4] = 200;
        assert!(decode(&lying).is_none());
        assert!(decode(&lying[..10]).is_none());
    }
}
