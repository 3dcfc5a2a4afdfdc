//! The events tests send, built one way: `visit`, `order` and `spend` with the fields every
//! event has, then only what a test cares about. The JSON is the wire form of the event schema
//! (docs/contract.md, "Events"); tests of malformed or unusual input write theirs by hand.

use std::fmt::Display;

use super::broker::Msg;

/// One event, as a producer would write it.
#[derive(Debug, Clone)]
pub struct Event {
    kind: &'static str,
    id: String,
    /// The `timestamp` value as it goes on the wire (epoch milliseconds, or a quoted string).
    timestamp: String,
    campaign: Option<String>,
    channel: Option<String>,
    /// The `amount` value as it goes on the wire (a number, or a quoted decimal string).
    amount: Option<String>,
    new_customer: Option<bool>,
    /// Further `"name":value` pairs, already JSON.
    extra: Vec<(String, String)>,
}

/// A visit at `ts` (epoch milliseconds).
pub fn visit(id: impl Display, ts: i64) -> Event {
    Event::new("visit", id, ts)
}

/// An order of `amount` (a JSON number) at `ts`.
pub fn order(id: impl Display, ts: i64, amount: impl Display) -> Event {
    Event::new("order", id, ts).amount(amount)
}

/// Ad spend of `amount` (a JSON number) at `ts`.
pub fn spend(id: impl Display, ts: i64, amount: impl Display) -> Event {
    Event::new("ad_spend", id, ts).amount(amount)
}

impl Event {
    fn new(kind: &'static str, id: impl Display, ts: i64) -> Event {
        Event {
            kind,
            id: id.to_string(),
            timestamp: ts.to_string(),
            campaign: None,
            channel: None,
            amount: None,
            new_customer: None,
            extra: Vec::new(),
        }
    }

    pub fn campaign(mut self, campaign: impl Display) -> Event {
        self.campaign = Some(campaign.to_string());
        self
    }

    pub fn channel(mut self, channel: impl Display) -> Event {
        self.channel = Some(channel.to_string());
        self
    }

    /// Campaign and channel together: the key of most tests.
    pub fn on(self, campaign: impl Display, channel: impl Display) -> Event {
        self.campaign(campaign).channel(channel)
    }

    /// The amount as a JSON number (`100`, `12.5`).
    pub fn amount(mut self, amount: impl Display) -> Event {
        self.amount = Some(amount.to_string());
        self
    }

    /// The amount as a decimal string (`"12.34"`), which the schema also accepts.
    pub fn amount_text(mut self, amount: impl Display) -> Event {
        self.amount = Some(json_string(&amount.to_string()));
        self
    }

    /// The timestamp as RFC 3339 text, the schema's other form.
    pub fn timestamp_text(mut self, text: impl Display) -> Event {
        self.timestamp = json_string(&text.to_string());
        self
    }

    pub fn new_customer(mut self, new: bool) -> Event {
        self.new_customer = Some(new);
        self
    }

    /// Any other field, its value given as JSON.
    pub fn field(mut self, name: &str, json: impl Display) -> Event {
        self.extra.push((name.to_string(), json.to_string()));
        self
    }

    /// The message value.
    pub fn json(&self) -> String {
        let mut out = format!(
            r#"{{"type":"{}","event_id":{},"timestamp":{}"#,
            self.kind,
            json_string(&self.id),
            self.timestamp
        );
        let text = |name: &str, value: &Option<String>| {
            value
                .as_ref()
                .map(|v| format!(r#","{name}":{}"#, json_string(v)))
                .unwrap_or_default()
        };
        out += &text("campaign", &self.campaign);
        out += &text("channel", &self.channel);
        if let Some(amount) = &self.amount {
            out += &format!(r#","amount":{amount}"#);
        }
        if let Some(new) = self.new_customer {
            out += &format!(r#","new_customer":{new}"#);
        }
        for (name, json) in &self.extra {
            out += &format!(r#","{name}":{json}"#);
        }
        out.push('}');
        out
    }

    /// The topic this kind of event goes to by default.
    pub fn topic(&self) -> &'static str {
        match self.kind {
            "visit" => "visits",
            "order" => "orders",
            _ => "ad-spend",
        }
    }

    /// The message to produce: to the event's topic, keyed by campaign (co-partitioning).
    pub fn msg(&self) -> Msg {
        self.msg_keyed(self.campaign.as_deref().unwrap_or_default())
    }

    /// The message to produce, with another key.
    pub fn msg_keyed(&self, key: &str) -> Msg {
        Msg::json(self.topic(), key, self.json())
    }
}

/// A JSON string literal: names with quotes, backslashes or control characters stay valid.
pub fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}
