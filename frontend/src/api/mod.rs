//! The `metrics.k8s.io` API (`v1` and `v1beta1`, see [`version`]): routing, selectors,
//! encodings and errors.
//!
//! A request enters [`router::Api::handle`]; it parses the path ([`router::Route`]) and query,
//! negotiates the encoding ([`media`]), joins store usage with metadata labels ([`items`]) and
//! writes JSON ([`json`]), protobuf ([`protobuf`]) or a Table ([`table`]) into a streamed
//! [`body::Body`]. Errors are `Status` objects ([`status`]).

pub mod body;
pub mod discovery;
pub mod items;
pub mod json;
pub mod media;
pub mod out;
pub mod protobuf;
pub mod quantity;
pub mod router;
pub mod status;
pub mod table;
pub mod timefmt;
pub mod version;
pub mod watch;
