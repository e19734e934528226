//! A component that is not a hostaction action: its `run` export takes no
//! params and returns a `u32` instead of `run(params: string) ->
//! result<outcome, string>`. The runtime must refuse it with a clear error
//! before running anything; the tests use it to check that.

#[allow(unsafe_code, missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package test:wrong;

            world wrong {
                export run: func() -> u32;
            }
        "#,
    });
}

struct WrongExport;

impl bindings::Guest for WrongExport {
    fn run() -> u32 {
        42
    }
}

// The generated export glue is unsafe FFI.
#[allow(unsafe_code)]
mod export {
    use super::{WrongExport, bindings};
    bindings::export!(WrongExport with_types_in bindings);
}
