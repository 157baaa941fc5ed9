//! Data residency (docs/mcp.md, "Data residency"): one deployment per region, each with its own
//! PostgreSQL, and a facade that refuses a principal from another region. `STEPWISE_REGION`
//! names this deployment's region; a principal's region comes from its OAuth token's region
//! claim or its static token's `region` attribute.
//!
//! With `STEPWISE_REGION` unset nothing is checked. With it set:
//! - an OAuth token must carry the region claim, equal to it (an authorization server shared by
//!   several regions says where each person belongs; a token that does not say is refused);
//! - a static token with a region must name this one; a static token without a region was made
//!   in this deployment's own database, for it, and is accepted.

use crate::auth::AuthError;

/// The variable naming this deployment's region.
pub const REGION_ENV: &str = "STEPWISE_REGION";

/// Whether `text` is a region name: 1 to 63 letters, digits, `_`, `.` or `-`, starting with a
/// letter or digit (as the `mcp.tokens.region` column checks).
pub fn check_region_name(text: &str) -> Result<(), AuthError> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadRegion(text.to_string()))
    }
}

/// Where a principal's credentials come from, which decides whether a missing region is
/// accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    StaticToken,
    OAuth,
}

/// This deployment's region, if it has one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Residency {
    home: Option<String>,
}

impl Residency {
    /// A deployment in region `home` (`None`: no residency checks).
    pub fn new(home: Option<String>) -> Result<Self, AuthError> {
        if let Some(home) = &home {
            check_region_name(home)?;
        }
        Ok(Self { home })
    }

    /// From `STEPWISE_REGION` (unset or empty: none); a malformed value is an error naming it.
    pub fn from_env() -> Result<Self, String> {
        let home = std::env::var(REGION_ENV)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        Self::new(home).map_err(|e| format!("{REGION_ENV}: {e}"))
    }

    pub fn home(&self) -> Option<&str> {
        self.home.as_deref()
    }

    /// `Ok` when a principal of `region`, authenticated by `credential`, may use this
    /// deployment; otherwise why not (for the refusal's message).
    pub fn admits(&self, region: Option<&str>, credential: Credential) -> Result<(), String> {
        let Some(home) = &self.home else {
            return Ok(());
        };
        match (region, credential) {
            (Some(region), _) if region.eq_ignore_ascii_case(home) => Ok(()),
            (Some(region), _) => Err(format!(
                "this Stepwise serves region `{home}`; the token belongs to region `{region}`: \
                 use that region's server (saga data does not leave its region)"
            )),
            (None, Credential::StaticToken) => Ok(()),
            (None, Credential::OAuth) => Err(format!(
                "this Stepwise serves region `{home}` and the token names no region: the \
                 authorization server must put the principal's region in the token"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn without_a_home_region_everyone_is_admitted() {
        let none = Residency::new(None).unwrap();
        assert!(none.admits(Some("us"), Credential::OAuth).is_ok());
        assert!(none.admits(None, Credential::OAuth).is_ok());
    }

    #[test]
    fn a_principal_of_another_region_is_refused() {
        let eu = Residency::new(Some("eu".into())).unwrap();
        assert!(eu.admits(Some("eu"), Credential::OAuth).is_ok());
        assert!(eu.admits(Some("EU"), Credential::StaticToken).is_ok());
        let refused = eu.admits(Some("us"), Credential::StaticToken).unwrap_err();
        assert!(refused.contains("`us`"), "{refused}");
        assert!(eu.admits(None, Credential::StaticToken).is_ok());
        assert!(eu.admits(None, Credential::OAuth).is_err());
    }

    #[test]
    fn region_names_are_short_plain_words() {
        for ok in ["eu", "us-east-1", "ap_south.2"] {
            check_region_name(ok).unwrap();
        }
        for bad in ["", "-eu", "eu west", "é", &"x".repeat(64)] {
            assert!(check_region_name(bad).is_err(), "{bad}");
        }
    }
}
