//! The store's one "try everything, report the first error" loop: cleanup,
//! flush and sweep loops must not stop at the first bad file.

use crate::ServerError;

/// Runs `f` on every item, also after one fails; returns the first error.
pub(crate) fn try_all<T>(
    items: impl IntoIterator<Item = T>,
    mut f: impl FnMut(T) -> Result<(), ServerError>,
) -> Result<(), ServerError> {
    let mut first_error = None;
    for item in items {
        if let Err(e) = f(item) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
