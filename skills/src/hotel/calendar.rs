//! The hotel's own calendar. "Today" for a hotel is the date on its front desk's wall, not in
//! UTC: a guest arriving in Los Angeles at 8 pm is arriving "today" there while UTC already
//! reads tomorrow. Steps take the current time from the engine's clock (`StepContext::now`)
//! and turn it into the local date of the hotel's time zone, `STEPWISE_HOTEL_TZ`.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

/// The variable naming the hotel's time zone: an IANA name such as `America/Los_Angeles`.
pub const TIME_ZONE_VAR: &str = "STEPWISE_HOTEL_TZ";

/// The hotel's time zone when [`TIME_ZONE_VAR`] is unset.
pub const DEFAULT_TIME_ZONE: Tz = Tz::UTC;

/// A time zone name the IANA database does not know: a configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{TIME_ZONE_VAR}=`{name}` is not a time zone: give an IANA name such as \
     America/Los_Angeles, Europe/Paris or UTC (unset means UTC)"
)]
pub struct UnknownTimeZone {
    pub name: String,
}

/// The hotel's time zone: one IANA name, kept as it is written (names are case-sensitive).
pub fn parse_time_zone(name: &str) -> Result<Tz, UnknownTimeZone> {
    name.trim().parse().map_err(|_| UnknownTimeZone {
        name: name.to_string(),
    })
}

/// The time zone [`TIME_ZONE_VAR`] names, or [`DEFAULT_TIME_ZONE`] when it is unset or empty.
pub fn time_zone_from_env() -> Result<Tz, UnknownTimeZone> {
    match std::env::var(TIME_ZONE_VAR) {
        Ok(name) if !name.trim().is_empty() => parse_time_zone(&name),
        _ => Ok(DEFAULT_TIME_ZONE),
    }
}

/// The date in `time_zone` at the instant `at`.
pub fn local_date(time_zone: Tz, at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&time_zone).date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("an RFC 3339 instant")
    }

    fn date(text: &str) -> NaiveDate {
        text.parse().expect("a date")
    }

    #[test]
    fn iana_names_parse_and_unknown_ones_are_refused_with_the_variable_named() {
        assert_eq!(
            parse_time_zone("America/Los_Angeles"),
            Ok(Tz::America__Los_Angeles)
        );
        assert_eq!(parse_time_zone("UTC"), Ok(Tz::UTC));
        for bad in ["Mars/Olympus_Mons", "america/los_angeles", "PST8PDTX", ""] {
            let error = parse_time_zone(bad).expect_err(bad);
            assert_eq!(error.name, bad);
            let message = error.to_string();
            assert!(message.contains("STEPWISE_HOTEL_TZ"), "{message}");
            assert!(message.contains("America/Los_Angeles"), "{message}");
        }
    }

    #[test]
    fn the_local_date_is_the_hotels_not_utcs() {
        let early_utc = at("2026-03-10T03:00:00Z");
        assert_eq!(local_date(Tz::UTC, early_utc), date("2026-03-10"));
        // 03:00 UTC is 20:00 the evening before in Los Angeles (PDT, UTC-7).
        assert_eq!(
            local_date(Tz::America__Los_Angeles, early_utc),
            date("2026-03-09")
        );
        // And 23:30 UTC is already tomorrow in Tokyo.
        assert_eq!(
            local_date(Tz::Asia__Tokyo, at("2026-03-10T23:30:00Z")),
            date("2026-03-11")
        );
    }
}
