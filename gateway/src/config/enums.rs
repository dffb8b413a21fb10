//! Istio's enum-valued fields as Rust enums. A value is written as its name, exactly
//! (as Istio's CRD schemas require), or as its protobuf number (which Istio's
//! protobuf decoding accepts too); anything else fails at load, with the file, line
//! and field, and the values that would do.

/// Declares an Istio enum: `Variant = ("NAME", number)`, the first being the zero
/// value. The type deserializes from the name or the number and knows its name.
macro_rules! istio_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident = ($text:literal, $number:literal)),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(clippy::enum_variant_names)] // the variants are Istio's names
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, as Istio names them.
            const NAMES: &'static [&'static str] = &[$($text),+];

            /// The value as Istio names it.
            #[allow(dead_code)]
            $vis fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        write!(f, "one of {}", $name::NAMES.join(", "))
                    }

                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        match v {
                            $($text => Ok($name::$variant),)+
                            _ => Err(E::custom(format!(
                                "unknown value {v:?}; expected one of {}",
                                $name::NAMES.join(", ")
                            ))),
                        }
                    }

                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$name, E> {
                        match v {
                            $($number => Ok($name::$variant),)+
                            _ => Err(E::custom(format!(
                                "unknown value {v}; expected one of {}",
                                $name::NAMES.join(", ")
                            ))),
                        }
                    }

                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$name, E> {
                        u64::try_from(v).map_err(|_| E::custom(format!("unknown value {v}"))).and_then(|v| self.visit_u64(v))
                    }
                }
                deserializer.deserialize_any(Visitor)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    istio_enum! {
        /// A test enum.
        enum Mode {
            /// Zero.
            Unset = ("UNSET", 0),
            /// Three.
            Strict = ("STRICT", 3),
        }
    }

    #[test]
    fn names_and_numbers_are_accepted_and_nothing_else() {
        let parse = |yaml: &str| serde_yaml::from_str::<Mode>(yaml).map_err(|e| e.to_string());
        assert_eq!(parse("STRICT"), Ok(Mode::Strict));
        assert_eq!(parse("\"UNSET\""), Ok(Mode::Unset));
        assert_eq!(parse("3"), Ok(Mode::Strict));
        let lower = parse("strict").unwrap_err();
        assert!(lower.contains("unknown value \"strict\"; expected one of UNSET, STRICT"), "{lower}");
        assert!(parse("2").unwrap_err().contains("unknown value 2"));
        assert!(parse("[STRICT]").is_err());
        assert_eq!(Mode::Strict.to_string(), "STRICT");
    }
}
