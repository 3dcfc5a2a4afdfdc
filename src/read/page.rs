//! `GET /`: a live page for people without Grafana. One self-contained HTML file (no CDN,
//! no build step) that polls the JSON API every 5 s: fleet KPI cards with sparklines, active
//! alerts, and campaigns ranked by ROAS. The guide's thresholds colour ROAS and CLV:CAC.

const PAGE: &str = include_str!("page.html");

/// The page for these window labels and reporting currency.
pub fn render(windows: &[&str], currency: &str) -> String {
    PAGE.replace(
        "__WINDOWS__",
        &serde_json::to_string(&windows).expect("strings serialise"),
    )
    .replace(
        "__CURRENCY__",
        &serde_json::to_string(currency).expect("a string serialises"),
    )
}
