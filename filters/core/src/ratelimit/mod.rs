//! Rate-limit classification: which class a request falls in, whose budget it spends, how
//! much of it, and the 429 answer. Envoy's limiters enforce; this decides what they count.

pub mod breakglass;
pub mod bucket;
pub mod classify;
pub mod descriptors;
pub mod filter;
