//! Read-only queries: `search_rooms`, `search_cases`, `get_booking`, `list_bookings`. Plain
//! calls, not sagas.

mod bookings;
mod cases;
mod rooms;

pub use bookings::{BookingView, BookingsOutput, GetBookingInput, ListBookingsInput, Stay};
pub use cases::{CaseView, CasesOutput, SearchCasesInput};
pub use rooms::{RoomView, RoomsOutput, SearchRoomsInput};

use super::Hotel;
use std::sync::Arc;
use stepwise_engine::Query;

pub fn all(hotel: &Arc<Hotel>) -> Vec<Query> {
    vec![
        rooms::search_rooms(hotel),
        cases::search_cases(hotel),
        bookings::get_booking(hotel),
        bookings::list_bookings(hotel),
    ]
}
