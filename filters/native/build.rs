//! Links the module for lazy binding: Envoy's callbacks are resolved at their first call, not
//! when Envoy loads the module, so that a module in an Envoy of another ABI gets to say so
//! (`abi::missing_callback`, checked first thing at load) instead of failing in the loader.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,lazy");
}
