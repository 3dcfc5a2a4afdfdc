//! The alerts as the last evaluation left them, shared with the read side.

use parking_lot::RwLock;

use super::Alert;

/// The alerts as of the last evaluation, for `/metrics` and `/api/v1/alerts`.
#[derive(Debug, Default)]
pub struct AlertView {
    alerts: RwLock<Vec<Alert>>,
}

impl AlertView {
    pub fn active(&self) -> Vec<Alert> {
        self.alerts.read().clone()
    }

    pub fn replace(&self, alerts: Vec<Alert>) {
        *self.alerts.write() = alerts;
    }
}
