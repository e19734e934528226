//! Support for [`crate::action!`]; not a public API.

use std::fmt::Display;
use std::sync::Once;

use serde::de::DeserializeOwned;

use crate::Outcome;
use crate::bindings::hostaction::host::types as wit;

/// The body of the exported `run`: installs the panic hook, parses the params,
/// calls the action and maps its result onto the WIT types.
pub fn run_action<P, E, F>(params: &str, run: F) -> Result<wit::Outcome, String>
where
    P: DeserializeOwned,
    E: Display,
    F: FnOnce(P) -> Result<Outcome, E>,
{
    install_panic_hook();
    let params = parse_params(params)?;
    run(params).map(Into::into).map_err(|e| e.to_string())
}

/// Parses the params JSON; an empty document counts as `{}`.
fn parse_params<P: DeserializeOwned>(params: &str) -> Result<P, String> {
    let text = if params.trim().is_empty() {
        "{}"
    } else {
        params
    };
    serde_json::from_str(text).map_err(|e| format!("invalid params: {e}"))
}

/// Sends panics to the run's log: the guest aborts on panic, and without this
/// the run's report would only say that the guest trapped.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("Box<dyn Any>");
            let line = match info.location() {
                Some(loc) => format!(
                    "panicked at {}:{}:{}: {message}",
                    loc.file(),
                    loc.line(),
                    loc.column()
                ),
                None => format!("panicked: {message}"),
            };
            crate::log::error(&line);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::parse_params;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct P {
        #[serde(default)]
        a: u32,
    }

    #[test]
    fn params_parse_and_report_errors() {
        assert_eq!(parse_params::<P>(r#"{"a": 3}"#), Ok(P { a: 3 }));
        assert_eq!(parse_params::<P>("  "), Ok(P { a: 0 }));
        let err = parse_params::<P>(r#"{"b": 1}"#).unwrap_err();
        assert!(
            err.starts_with("invalid params: unknown field `b`"),
            "{err}"
        );
    }
}
