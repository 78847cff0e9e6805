//! Error text for logs and retry reasons.

/// An error and its sources, `a: b: c`: the elasticsearch client's own message alone rarely
/// says whether the connection was refused or timed out.
pub(super) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}
