//! Who a connected client is, as authentication decided: its user name, client id and the
//! restrictions its token carried.

use std::sync::Arc;

use super::jwt::TokenGrants;

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name, or for a token the `sub` claim; `None` for anonymous clients.
    pub username: Option<String>,
    pub client_id: String,
    /// Topic restrictions carried by the token the client connected with.
    pub(super) grants: Option<Arc<TokenGrants>>,
}

impl Identity {
    /// An identity without token restrictions (anonymous, password, or restored state).
    pub fn new(username: Option<String>, client_id: String) -> Identity {
        Identity {
            username,
            client_id,
            grants: None,
        }
    }
}
