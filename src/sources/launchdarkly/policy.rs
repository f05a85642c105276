//! LaunchDarkly policy statements (as in a manifest's `defaultPolicy`) deciding which entries
//! a backfill keeps, so that it holds what the hook would have delivered.
//!
//! An access (action, resource) is allowed when an `allow` statement matches it and no
//! `deny` statement does (an explicit deny wins). A statement matches when its `actions`
//! (or everything but its `notActions`) match the action and its `resources` (or everything
//! but its `notResources`) match the resource, with `*` globs. An entry is kept when one of
//! its accesses is allowed.

use serde::Deserialize;

use crate::event::{glob, strip_tags};
use serde_json::Value;

/// One policy statement.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Statement {
    pub effect: Effect,
    #[serde(default)]
    pub actions: Option<Vec<String>>,
    #[serde(default)]
    pub not_actions: Option<Vec<String>>,
    #[serde(default)]
    pub resources: Option<Vec<String>>,
    #[serde(default)]
    pub not_resources: Option<Vec<String>>,
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// A list of statements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub statements: Vec<Statement>,
}

fn any_glob(patterns: &[String], text: &str) -> bool {
    let text = strip_tags(text);
    patterns
        .iter()
        .any(|p| glob(strip_tags(p).as_bytes(), text.as_bytes()))
}

impl Statement {
    fn matches(&self, action: &str, resource: &str) -> bool {
        let action_ok = match (&self.actions, &self.not_actions) {
            (Some(a), _) => any_glob(a, action),
            (None, Some(n)) => !any_glob(n, action),
            (None, None) => false,
        };
        let resource_ok = match (&self.resources, &self.not_resources) {
            (Some(r), _) => any_glob(r, resource),
            (None, Some(n)) => !any_glob(n, resource),
            (None, None) => false,
        };
        action_ok && resource_ok
    }
}

impl Policy {
    /// Parses a JSON array of statements.
    pub fn parse(text: &str) -> Result<Self, String> {
        let statements: Vec<Statement> = serde_json::from_str(text)
            .map_err(|e| format!("not a JSON array of policy statements: {e}"))?;
        for (i, s) in statements.iter().enumerate() {
            if s.actions.is_some() == s.not_actions.is_some() {
                return Err(format!(
                    "statement {i}: give exactly one of `actions` and `notActions`"
                ));
            }
            if s.resources.is_some() == s.not_resources.is_some() {
                return Err(format!(
                    "statement {i}: give exactly one of `resources` and `notResources`"
                ));
            }
        }
        Ok(Self { statements })
    }

    /// Whether the policy allows one access.
    pub fn allows(&self, action: &str, resource: &str) -> bool {
        let denied = self
            .statements
            .iter()
            .any(|s| s.effect == Effect::Deny && s.matches(action, resource));
        !denied
            && self
                .statements
                .iter()
                .any(|s| s.effect == Effect::Allow && s.matches(action, resource))
    }

    /// Whether an entry (its `accesses`) is kept.
    pub fn keeps(&self, entry: &Value) -> bool {
        entry
            .get("accesses")
            .and_then(Value::as_array)
            .is_some_and(|accesses| {
                accesses.iter().any(|a| {
                    let action = a.get("action").and_then(Value::as_str).unwrap_or("");
                    let resource = a.get("resource").and_then(Value::as_str).unwrap_or("");
                    self.allows(action, resource)
                })
            })
    }

    /// A `spec` that narrows the API query without losing anything the policy keeps: the
    /// single resource of a policy made of one `allow` statement.
    pub fn narrowing_spec(&self) -> Option<&str> {
        match self.statements.as_slice() {
            [Statement {
                effect: Effect::Allow,
                resources: Some(r),
                ..
            }] if r.len() == 1 => Some(&r[0]),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deny_wins_and_not_lists() {
        let p = Policy::parse(
            r#"[{"effect":"allow","actions":["*"],"resources":["proj/*:env/production:flag/*"]},
                {"effect":"deny","actions":["deleteFlag"],"resources":["proj/*:env/*:flag/*"]},
                {"effect":"allow","notActions":["createMember"],"resources":["member/*"]}]"#,
        )
        .unwrap();
        assert!(p.allows("updateOn", "proj/default:env/production:flag/x"));
        assert!(p.allows("updateOn", "proj/default;web:env/production:flag/x;beta"));
        assert!(!p.allows("updateOn", "proj/default:env/test:flag/x"));
        assert!(!p.allows("deleteFlag", "proj/default:env/production:flag/x"));
        assert!(p.allows("updateRole", "member/123"));
        assert!(!p.allows("createMember", "member/123"));
        let entry = json!({"accesses": [{"action": "updateOn", "resource": "proj/a:env/test:flag/f"},
                                        {"action": "updateOn", "resource": "proj/a:env/production:flag/f"}]});
        assert!(p.keeps(&entry));
        assert!(!p.keeps(&json!({"accesses": []})));
        assert_eq!(p.narrowing_spec(), None);
    }

    #[test]
    fn rejects_bad_statements() {
        assert!(Policy::parse(r#"[{"effect":"allow","resources":["*"]}]"#).is_err());
        assert!(
            Policy::parse(r#"[{"effect":"maybe","actions":["*"],"resources":["*"]}]"#).is_err()
        );
        assert!(Policy::parse(r#"{"effect":"allow"}"#).is_err());
        let one = Policy::parse(
            r#"[{"effect":"allow","actions":["*"],"resources":["proj/*:env/production:flag/*"]}]"#,
        )
        .unwrap();
        assert_eq!(one.narrowing_spec(), Some("proj/*:env/production:flag/*"));
    }
}
