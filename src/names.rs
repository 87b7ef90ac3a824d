//! Closed sets of names: enums whose variants each have one fixed text, used where
//! Terrarium writes or reads a name (audit event kinds, finding severities, red-team
//! categories, the error kinds Terrarium itself reports).
//!
//! `named!` declares such an enum with `as_str`, `ALL`, `Display`,
//! `FromStr` (whose error lists the accepted names) and serde as that text, so that
//! a typo is a compile error in Rust and a clear error in a file or a command line,
//! never a silently different string.

/// A name that is not one of its set's; the message lists those that are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {given:?} is not one of {}", expected.join(", "))]
pub struct UnknownName {
    /// What kind of name it was meant to be (`category`, `event kind`, …).
    pub what: &'static str,
    /// The text given.
    pub given: String,
    /// The names accepted.
    pub expected: &'static [&'static str],
}

/// Declares an enum of named variants:
///
/// ```text
/// named! {
///     /// Doc.
///     "severity" pub enum Severity {
///         /// Doc.
///         Deny = "deny",
///         /// Doc.
///         Warn = "warn",
///     }
/// }
/// ```
macro_rules! named {
    ($(#[$meta:meta])* $what:literal $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            #[allow(dead_code, reason = "declared for every named enum; not every one is iterated")]
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// Every variant's name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text,)+];

            /// The variant's name, as written in files, JSON and on the command line.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::names::UnknownName;

            fn from_str(text: &str) -> Result<$name, $crate::names::UnknownName> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::names::UnknownName { what: $what, given: text.into(), expected: $name::NAMES }),
                }
            }
        }

        // The OpenAPI schema: a string, one of the names (what serde writes).
        #[cfg(feature = "server")]
        impl ::utoipa::PartialSchema for $name {
            fn schema() -> ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema> {
                ::utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(::utoipa::openapi::schema::Type::String)
                    .enum_values(Some($name::NAMES.iter().copied()))
                    .into()
            }
        }

        #[cfg(feature = "server")]
        impl ::utoipa::ToSchema for $name {}

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let text = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                text.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use named;

#[cfg(test)]
mod tests {
    super::named! {
        /// A test set.
        "colour" enum Colour {
            /// Red.
            Red = "red",
            /// Dark blue.
            DarkBlue = "dark_blue",
        }
    }

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_set() {
        for c in Colour::ALL {
            assert_eq!(c.as_str().parse::<Colour>(), Ok(*c));
            let json = serde_json::to_string(c).expect("serialize");
            assert_eq!(serde_json::from_str::<Colour>(&json).expect("deserialize"), *c);
        }
        assert_eq!(Colour::DarkBlue.to_string(), "dark_blue");
        let e = "green".parse::<Colour>().expect_err("unknown");
        assert_eq!(e.to_string(), "colour \"green\" is not one of red, dark_blue");
        let e = serde_yaml::from_str::<Colour>("blue").expect_err("unknown");
        assert!(e.to_string().contains("red, dark_blue"), "{e}");
    }
}
