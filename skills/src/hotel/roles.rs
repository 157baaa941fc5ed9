//! The hotel's roles, declared in the catalog before the skills that name them (the built-in
//! `operator`, who runs Stepwise, comes with every registry). Which tools each role may call is
//! said by each skill's exposure; these say what a facade needs beyond that.

use stepwise_engine::{Registry, RegistryError, Role};

/// The roles of the Dewy Resort.
pub fn roles() -> Vec<Role> {
    vec![
        Role::new(
            "guest",
            "A hotel guest (the subject is the guest's email): acts only on its own bookings \
             and sagas, and may cancel its own sagas.",
        )
        .own_sagas_only()
        .may_cancel(),
        Role::new("staff", "Front desk: serves any guest."),
        Role::new(
            "manager",
            "Hotel management: everything the front desk does, reverses checkouts and cancels \
             sagas.",
        )
        .may_cancel(),
    ]
}

/// Declares [`roles`] in `registry`.
pub fn declare(registry: &mut Registry) -> Result<(), RegistryError> {
    for role in roles() {
        registry.declare_role(role)?;
    }
    Ok(())
}
