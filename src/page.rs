//! Reading an owner's keys a page at a time: [`Page`] asks, [`KeyPage`]
//! answers.

use std::ops::Deref;

use crate::key::KeyId;
use crate::record::KeyRecord;

/// Most keys one page may hold.
pub const MAX_PAGE: usize = 1_000;

/// Which page of an owner's keys to read: up to `limit` keys (1 to
/// [`MAX_PAGE`]), oldest first, starting after the key `after` (from the
/// start when `None`). The cursor is the previous page's
/// [`next`](KeyPage::next).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tm_auth::ManagerError> {
/// use tm_auth::{KeyManager, MemoryStore, NewKey, Page};
///
/// let manager = KeyManager::new(MemoryStore::new());
/// for i in 0..5 {
///     manager.create(NewKey::new("acct_42", format!("Key {i}"))).await?;
/// }
/// let mut names = Vec::new();
/// let mut page = Page { after: None, limit: 2 };
/// loop {
///     let keys = manager.list_page("acct_42", page).await?;
///     names.extend(keys.iter().map(|k| k.name.clone()));
///     match keys.next {
///         Some(after) => page = Page { after: Some(after), limit: 2 },
///         None => break,
///     }
/// }
/// assert_eq!(names, ["Key 0", "Key 1", "Key 2", "Key 3", "Key 4"]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Start after this key (a previous page's [`KeyPage::next`]); `None`:
    /// from the owner's oldest key.
    pub after: Option<KeyId>,
    /// Most keys to return, 1 to [`MAX_PAGE`].
    pub limit: usize,
}

impl Page {
    /// The first `limit` keys.
    pub fn first(limit: usize) -> Page {
        Page { after: None, limit }
    }
}

/// One page of an owner's keys, oldest first, revoked ones included. It
/// reads as a slice of the records (`page.len()`, `page[0]`, `page.iter()`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyPage {
    /// The keys on this page.
    pub keys: Vec<KeyRecord>,
    /// The cursor for the next page (the last key's id) when more keys
    /// follow; `None` on the last page.
    pub next: Option<KeyId>,
}

impl Deref for KeyPage {
    type Target = [KeyRecord];

    fn deref(&self) -> &[KeyRecord] {
        &self.keys
    }
}

impl IntoIterator for KeyPage {
    type Item = KeyRecord;
    type IntoIter = std::vec::IntoIter<KeyRecord>;

    fn into_iter(self) -> Self::IntoIter {
        self.keys.into_iter()
    }
}

impl<'a> IntoIterator for &'a KeyPage {
    type Item = &'a KeyRecord;
    type IntoIter = std::slice::Iter<'a, KeyRecord>;

    fn into_iter(self) -> Self::IntoIter {
        self.keys.iter()
    }
}
