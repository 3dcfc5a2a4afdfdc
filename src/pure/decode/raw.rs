//! The general path: any JSON object, through serde, reduced to the fields validation
//! reads. Also the form the fast parser fills.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Any JSON value, reduced to what validation needs to tell apart.
#[derive(Debug)]
pub(super) enum Scalar<'a> {
    Null,
    Bool(bool),
    U64(u64),
    /// Negative integers: never valid for any field, kept apart from `U64`.
    I64,
    F64(f64),
    Str(Cow<'a, str>),
    /// An array or object, skipped over.
    Composite,
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::U64(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(match u64::try_from(v) {
                    Ok(u) => Scalar::U64(u),
                    Err(_) => Scalar::I64,
                })
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::F64(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Composite)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Composite)
            }
        }
        de.deserialize_any(ScalarVisitor)
    }
}

/// The event fields (docs/contract.md, "Events"), each as whatever JSON value it held.
#[derive(Default)]
pub(super) struct RawEvent<'a> {
    pub(super) kind: Option<Scalar<'a>>,
    pub(super) event_id: Option<Scalar<'a>>,
    pub(super) timestamp: Option<Scalar<'a>>,
    pub(super) campaign: Option<Scalar<'a>>,
    pub(super) channel: Option<Scalar<'a>>,
    pub(super) amount: Option<Scalar<'a>>,
    pub(super) currency: Option<Scalar<'a>>,
    pub(super) new_customer: Option<Scalar<'a>>,
    pub(super) visitor_id: Option<Scalar<'a>>,
    pub(super) customer_id: Option<Scalar<'a>>,
    pub(super) order_id: Option<Scalar<'a>>,
    pub(super) device: Option<Scalar<'a>>,
    /// A field given twice: ambiguous, so rejected rather than guessed.
    pub(super) duplicate: Option<&'static str>,
}

/// A key of the event object: one of the known fields, or `None` for any other.
pub(super) struct FieldName(Option<Field>);

/// The event fields (docs/contract.md, "Events"), in the order of `Field::NAMES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Kind,
    EventId,
    Timestamp,
    Campaign,
    Channel,
    Amount,
    Currency,
    NewCustomer,
    VisitorId,
    CustomerId,
    OrderId,
    Device,
}

impl Field {
    const ALL: [Field; 12] = [
        Field::Kind,
        Field::EventId,
        Field::Timestamp,
        Field::Campaign,
        Field::Channel,
        Field::Amount,
        Field::Currency,
        Field::NewCustomer,
        Field::VisitorId,
        Field::CustomerId,
        Field::OrderId,
        Field::Device,
    ];
    const NAMES: [&'static str; 12] = [
        "type",
        "event_id",
        "timestamp",
        "campaign",
        "channel",
        "amount",
        "currency",
        "new_customer",
        "visitor_id",
        "customer_id",
        "order_id",
        "device",
    ];

    pub(super) fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub(super) fn from_name(name: &str) -> Option<Field> {
        let i = Self::NAMES.iter().position(|known| *known == name)?;
        Some(Self::ALL[i])
    }
}

impl<'de> Deserialize<'de> for FieldName {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = FieldName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, v: &str) -> Result<FieldName, E> {
                Ok(FieldName(Field::from_name(v)))
            }
        }
        de.deserialize_identifier(FieldVisitor)
    }
}

impl<'a> RawEvent<'a> {
    /// Stores a field's value; a repeated field is remembered.
    #[inline(always)]
    pub(super) fn set(&mut self, field: Field, value: Scalar<'a>) {
        let slot = match field {
            Field::Kind => &mut self.kind,
            Field::EventId => &mut self.event_id,
            Field::Timestamp => &mut self.timestamp,
            Field::Campaign => &mut self.campaign,
            Field::Channel => &mut self.channel,
            Field::Amount => &mut self.amount,
            Field::Currency => &mut self.currency,
            Field::NewCustomer => &mut self.new_customer,
            Field::VisitorId => &mut self.visitor_id,
            Field::CustomerId => &mut self.customer_id,
            Field::OrderId => &mut self.order_id,
            Field::Device => &mut self.device,
        };
        if slot.replace(value).is_some() {
            self.duplicate.get_or_insert(field.name());
        }
    }
}

impl<'de> Deserialize<'de> for RawEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct EventVisitor;
        impl<'de> Visitor<'de> for EventVisitor {
            type Value = RawEvent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut raw = RawEvent::default();
                while let Some(FieldName(field)) = map.next_key::<FieldName>()? {
                    match field {
                        Some(field) => raw.set(field, map.next_value::<Scalar<'de>>()?),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(raw)
            }
        }
        de.deserialize_map(EventVisitor)
    }
}
