//! `GET /`: a live page for people without Grafana. One self-contained HTML file (no CDN,
//! no build step) that polls the JSON API every 5 s: fleet KPI cards with sparklines, active
//! alerts, and campaigns ranked by ROAS. The guide's thresholds colour ROAS and CLV:CAC.

use axum::extract::State;
use axum::response::Html;

use super::http::AppState;

const PAGE: &str = include_str!("page.html");

pub async fn page(State(state): State<AppState>) -> Html<String> {
    let windows: Vec<&str> = state.windows.specs().iter().map(|s| &*s.label).collect();
    let currency = state.telemetry.reporting_currency();
    Html(
        PAGE.replace(
            "__WINDOWS__",
            &serde_json::to_string(&windows).expect("strings serialise"),
        )
        .replace(
            "__CURRENCY__",
            &serde_json::to_string(currency).expect("a string serialises"),
        ),
    )
}
