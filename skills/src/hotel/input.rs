//! Input rules serde cannot express: formats of emails, names, phones, room numbers and
//! payment method tokens, date order. Inputs are checked before a saga is written, so a bad
//! one writes nothing.

use chrono::NaiveDate;
use stepwise_engine::InputError;

/// The longest stay a booking may cover.
pub const MAX_NIGHTS: i64 = 30;

/// A plausible email address (ASCII, one `@`, a dotted domain). Quotes, spaces and other
/// characters that have no business in an address are refused.
pub fn email(field: &str, value: &str) -> Result<(), InputError> {
    let bad = || InputError::field(field, format!("`{value}` is not a valid email address"));
    if value.len() > 254 {
        return Err(bad());
    }
    let (local, domain) = value.split_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-'))
        && !local.starts_with('.')
        && !local.ends_with('.');
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if local_ok && domain_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// A person's name: letters, spaces, hyphens, periods and apostrophes (O'Brien), 1-80
/// characters. Double quotes, digits and punctuation are refused.
pub fn person_name(field: &str, value: &str) -> Result<(), InputError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 80 {
        return Err(InputError::field(field, "must be 1 to 80 characters"));
    }
    if trimmed.len() != value.len() {
        return Err(InputError::field(
            field,
            "must not start or end with spaces",
        ));
    }
    match value
        .chars()
        .find(|c| !(c.is_alphabetic() || matches!(c, ' ' | '-' | '.' | '\'' | '’')))
    {
        Some(c) => Err(InputError::field(
            field,
            format!(
                "may contain only letters, spaces, hyphens, periods and apostrophes (found `{c}`)"
            ),
        )),
        None => Ok(()),
    }
}

/// A room number such as `101` or `PH1`.
pub fn room_number(field: &str, value: &str) -> Result<(), InputError> {
    if (1..=8).contains(&value.len()) && value.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(InputError::field(
            field,
            format!("`{value}` is not a room number"),
        ))
    }
}

/// A booking number such as `BK-000012`.
pub fn booking_number(field: &str, value: &str) -> Result<(), InputError> {
    if (1..=32).contains(&value.len())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        Ok(())
    } else {
        Err(InputError::field(
            field,
            format!("`{value}` is not a booking number"),
        ))
    }
}

/// An E.164 phone number such as `+15551234567`.
pub fn phone(field: &str, value: &str) -> Result<(), InputError> {
    let digits = value.strip_prefix('+').unwrap_or("");
    if (7..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0')
    {
        Ok(())
    } else {
        Err(InputError::field(
            field,
            format!("`{value}` is not an E.164 phone number such as +15551234567"),
        ))
    }
}

/// A payment method token (`pm_...`). Card numbers are never accepted.
pub fn payment_method(field: &str, value: &str) -> Result<(), InputError> {
    let rest = value.strip_prefix("pm_").unwrap_or("");
    if (1..=64).contains(&rest.len()) && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(())
    } else {
        Err(InputError::field(
            field,
            "must be a payment method token such as pm_card_visa (never a card number)",
        ))
    }
}

/// The key that makes a repeated call return the same saga.
pub fn idempotency_key(value: &str) -> Result<(), InputError> {
    if (1..=200).contains(&value.len()) && !value.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(InputError::field(
            "idempotency_key",
            "must be 1 to 200 printable characters",
        ))
    }
}

/// Free text (descriptions, requests): bounded, no control characters except newlines.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), InputError> {
    if value.trim().is_empty() {
        return Err(InputError::field(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(InputError::field(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(InputError::field(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Check-out strictly after check-in, at most [`MAX_NIGHTS`] nights.
pub fn stay(check_in: NaiveDate, check_out: NaiveDate) -> Result<i64, InputError> {
    let nights = (check_out - check_in).num_days();
    if nights <= 0 {
        return Err(InputError::field(
            "check_out_date",
            format!("must be after check_in_date ({nights} nights asked)"),
        ));
    }
    if nights > MAX_NIGHTS {
        return Err(InputError::field(
            "check_out_date",
            format!("a stay is at most {MAX_NIGHTS} nights ({nights} asked)"),
        ));
    }
    Ok(nights)
}

/// Runs every check and returns the first failure.
pub fn all(checks: impl IntoIterator<Item = Result<(), InputError>>) -> Result<(), InputError> {
    checks.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_with_quotes_or_spaces_are_refused() {
        assert!(email("e", "emma.johnson@example.com").is_ok());
        assert!(email("e", "a+b@sub.example.co").is_ok());
        for bad in [
            "x' OR 1=1",
            "a@b",
            "a b@example.com",
            "a'@example.com",
            "@example.com",
            "a@-x.com",
        ] {
            assert!(email("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_allow_apostrophes_but_not_double_quotes() {
        assert!(person_name("n", "Siobhán O'Brien-Lee").is_ok());
        assert!(person_name("n", "Ann\"ie").is_err());
        assert!(person_name("n", "Robert'); DROP").is_err());
        assert!(person_name("n", "").is_err());
    }

    #[test]
    fn stays_need_positive_bounded_nights() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date");
        assert_eq!(stay(d("2026-12-01"), d("2026-12-04")).ok(), Some(3));
        assert!(stay(d("2026-12-04"), d("2026-12-01")).is_err());
        assert!(stay(d("2026-12-01"), d("2026-12-01")).is_err());
        assert!(stay(d("2026-12-01"), d("2027-02-01")).is_err());
    }

    #[test]
    fn payment_methods_are_tokens_never_card_numbers() {
        assert!(payment_method("p", "pm_card_visa").is_ok());
        assert!(payment_method("p", "4242424242424242").is_err());
        assert!(payment_method("p", "pm_").is_err());
    }
}
