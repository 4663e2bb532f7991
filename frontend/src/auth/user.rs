//! Who made a request: the Kubernetes `user.Info` of an authenticated caller.

use std::collections::BTreeMap;

/// Username given to unauthenticated requests when `--anonymous-auth` is on.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// Group of every anonymous request.
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// Group added to every authenticated (non-anonymous) user, as kube-apiserver does.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// Members are allowed everything without a SubjectAccessReview, as in kube-apiserver.
pub const MASTERS_GROUP: &str = "system:masters";

/// Who made a request, as an authenticator established it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct UserInfo {
    /// The username (`X-Remote-User`, a client certificate's CN, or TokenReview's username).
    pub name: String,
    /// A unique id of the user, if the authenticator gave one; empty otherwise.
    pub uid: String,
    /// Groups the user belongs to, in the order the authenticator gave them.
    pub groups: Vec<String>,
    /// Extra attributes (`X-Remote-Extra-<key>`, TokenReview's `extra`), keys lowercased.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The user of an unauthenticated request when anonymous access is on.
    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS_USER.to_owned(),
            groups: vec![UNAUTHENTICATED_GROUP.to_owned()],
            ..Self::default()
        }
    }

    /// Whether this is the anonymous user.
    pub fn is_anonymous(&self) -> bool {
        self.name == ANONYMOUS_USER
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Adds `system:authenticated` unless the user already has it or `system:unauthenticated`
    /// (kube-apiserver's AuthenticatedGroupAdder).
    pub(crate) fn with_authenticated_group(mut self) -> Self {
        if !self.in_group(AUTHENTICATED_GROUP) && !self.in_group(UNAUTHENTICATED_GROUP) {
            self.groups.push(AUTHENTICATED_GROUP.to_owned());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticated_group_is_added_once_and_never_to_anonymous() {
        let alice = UserInfo {
            name: "alice".into(),
            groups: vec!["dev".into()],
            ..UserInfo::default()
        };
        let alice = alice.with_authenticated_group().with_authenticated_group();
        assert_eq!(alice.groups, ["dev", AUTHENTICATED_GROUP]);
        let anonymous = UserInfo::anonymous().with_authenticated_group();
        assert_eq!(anonymous.groups, [UNAUTHENTICATED_GROUP]);
        assert!(anonymous.is_anonymous());
    }
}
