//! States that cross the bus as strings. Inside GSE they are enums; on the wire,
//! in JSON and in metrics they are the one string each variant names here.

/// Defines an enum whose variants are written as the given strings: `as_str`,
/// `Display`, `FromStr` (an error names `$what`) and serde all use them.
macro_rules! wire_enum {
    ($what:literal, $(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $variant:ident = $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The variant's name on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $s,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$variant),)+
                    other => Err(format!(concat!("unknown ", $what, " '{}'"), other)),
                }
            }
        }
    };
}
