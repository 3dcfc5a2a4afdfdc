//! The KPI formulas of docs/contract.md ("KPIs"), computed from window sums at read time.
//!
//! Sums are exact integers (counts, and money in micro-units); ratios are derived from them
//! only when asked for, so a KPI is never averaged and never drifts. A KPI whose denominator
//! is zero is `None`: no series in `/metrics`, `null` in JSON.

use std::ops::AddAssign;

use crate::pure::decode::MICROS_PER_UNIT;

/// What a window (or a counter) holds for one key: the raw material of every KPI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sums {
    pub visits: u64,
    pub orders: u64,
    pub new_customers: u64,
    /// Order amounts, reporting-currency micro-units.
    pub gmv_micros: u128,
    /// Ad spend, reporting-currency micro-units.
    pub ad_spend_micros: u128,
}

impl AddAssign<&Sums> for Sums {
    fn add_assign(&mut self, other: &Sums) {
        self.visits += other.visits;
        self.orders += other.orders;
        self.new_customers += other.new_customers;
        self.gmv_micros += other.gmv_micros;
        self.ad_spend_micros += other.ad_spend_micros;
    }
}

impl Sums {
    /// GMV in reporting-currency units.
    pub fn gmv(&self) -> f64 {
        self.gmv_micros as f64 / MICROS_PER_UNIT
    }

    /// Ad spend in reporting-currency units.
    pub fn ad_spend(&self) -> f64 {
        self.ad_spend_micros as f64 / MICROS_PER_UNIT
    }

    /// True when nothing was counted: such a window exports no series.
    pub fn is_empty(&self) -> bool {
        *self == Sums::default()
    }

    pub fn kpis(&self, clv: &ClvAssumptions) -> Kpis {
        let ratio = |num: f64, den: f64| (den != 0.0).then(|| num / den);
        let cvr = ratio(self.orders as f64, self.visits as f64);
        let aov = ratio(self.gmv(), self.orders as f64);
        let cac = ratio(self.ad_spend(), self.new_customers as f64);
        let roas = ratio(self.gmv(), self.ad_spend());
        // One factor, as the Prometheus recording rules multiply: the same float result.
        let clv_value = aov.map(|aov| aov * (clv.purchases_per_year * clv.lifetime_years));
        let clv_cac = match (clv_value, cac) {
            (Some(clv), Some(cac)) => ratio(clv, cac),
            _ => None,
        };
        Kpis {
            cvr,
            aov,
            cac,
            clv: clv_value,
            roas,
            clv_cac,
        }
    }
}

/// The business assumptions behind CLV (config `kpi.purchases_per_year`, `kpi.lifetime_years`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClvAssumptions {
    pub purchases_per_year: f64,
    pub lifetime_years: f64,
}

/// The KPIs of docs/contract.md; `None` where the denominator is zero.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Kpis {
    /// orders ÷ visits.
    pub cvr: Option<f64>,
    /// revenue ÷ orders.
    pub aov: Option<f64>,
    /// ad spend ÷ new customers.
    pub cac: Option<f64>,
    /// AOV × purchases per year × lifetime in years.
    pub clv: Option<f64>,
    /// revenue ÷ ad spend.
    pub roas: Option<f64>,
    /// CLV ÷ CAC.
    pub clv_cac: Option<f64>,
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kpi {
    Cvr,
    Aov,
    Cac,
    Clv,
    Roas,
    ClvCac,
    Gmv,
    AdSpend,
    Visits,
    Orders,
    NewCustomers,
}

impl Kpi {
    /// Every KPI a rule may watch, in the order the documentation lists them.
    pub const ALL: [Kpi; 11] = [
        Kpi::Cvr,
        Kpi::Aov,
        Kpi::Cac,
        Kpi::Clv,
        Kpi::Roas,
        Kpi::ClvCac,
        Kpi::Gmv,
        Kpi::AdSpend,
        Kpi::Visits,
        Kpi::Orders,
        Kpi::NewCustomers,
    ];

    pub fn parse(name: &str) -> Option<Kpi> {
        Some(match name {
            "cvr" => Kpi::Cvr,
            "aov" => Kpi::Aov,
            "cac" => Kpi::Cac,
            "clv" => Kpi::Clv,
            "roas" => Kpi::Roas,
            "clv_cac" => Kpi::ClvCac,
            "gmv" => Kpi::Gmv,
            "ad_spend" => Kpi::AdSpend,
            "visits" => Kpi::Visits,
            "orders" => Kpi::Orders,
            "new_customers" => Kpi::NewCustomers,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kpi::Cvr => "cvr",
            Kpi::Aov => "aov",
            Kpi::Cac => "cac",
            Kpi::Clv => "clv",
            Kpi::Roas => "roas",
            Kpi::ClvCac => "clv_cac",
            Kpi::Gmv => "gmv",
            Kpi::AdSpend => "ad_spend",
            Kpi::Visits => "visits",
            Kpi::Orders => "orders",
            Kpi::NewCustomers => "new_customers",
        }
    }

    /// The value for some sums; `None` where undefined (zero denominator).
    pub fn of(self, s: &Sums, k: &Kpis) -> Option<f64> {
        match self {
            Kpi::Cvr => k.cvr,
            Kpi::Aov => k.aov,
            Kpi::Cac => k.cac,
            Kpi::Clv => k.clv,
            Kpi::Roas => k.roas,
            Kpi::ClvCac => k.clv_cac,
            Kpi::Gmv => Some(s.gmv()),
            Kpi::AdSpend => Some(s.ad_spend()),
            Kpi::Visits => Some(s.visits as f64),
            Kpi::Orders => Some(s.orders as f64),
            Kpi::NewCustomers => Some(s.new_customers as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUIDE: ClvAssumptions = ClvAssumptions {
        purchases_per_year: 4.0,
        lifetime_years: 3.0,
    };

    fn money(units: u64) -> u128 {
        units as u128 * 1_000_000
    }

    /// docs/contract.md, worked example 1.
    #[test]
    fn cvr_worked_example() {
        let s = Sums {
            visits: 10_000,
            orders: 500,
            ..Sums::default()
        };
        assert_eq!(s.kpis(&GUIDE).cvr, Some(0.05));
    }

    /// docs/contract.md, worked example 2.
    #[test]
    fn cac_worked_example() {
        let s = Sums {
            new_customers: 100,
            ad_spend_micros: money(5_000),
            ..Sums::default()
        };
        assert_eq!(s.kpis(&GUIDE).cac, Some(50.0));
    }

    /// docs/contract.md, worked example 3.
    #[test]
    fn aov_worked_example() {
        let s = Sums {
            orders: 500,
            gmv_micros: money(20_000),
            ..Sums::default()
        };
        assert_eq!(s.kpis(&GUIDE).aov, Some(40.0));
    }

    /// docs/contract.md, worked example 4.
    #[test]
    fn clv_worked_example() {
        // 50 AOV x 4 purchases a year x 3 years.
        let s = Sums {
            orders: 10,
            gmv_micros: money(500),
            ..Sums::default()
        };
        assert_eq!(s.kpis(&GUIDE).aov, Some(50.0));
        assert_eq!(s.kpis(&GUIDE).clv, Some(600.0));
    }

    /// docs/contract.md, worked example 5.
    #[test]
    fn roas_worked_example() {
        let s = Sums {
            gmv_micros: money(10_000),
            ad_spend_micros: money(2_500),
            ..Sums::default()
        };
        assert_eq!(s.kpis(&GUIDE).roas, Some(4.0));
    }

    /// docs/contract.md, worked example 6.
    #[test]
    fn gmv_is_the_sum_of_amounts() {
        let s = Sums {
            gmv_micros: 49_900_000 + 12_500_000,
            ..Sums::default()
        };
        assert_eq!(s.gmv(), 62.4);
    }

    /// docs/contract.md, worked example 7.
    #[test]
    fn clv_cac_combines_both() {
        // CLV 600, CAC 50 -> 12.
        let s = Sums {
            orders: 10,
            new_customers: 10,
            gmv_micros: money(500),
            ad_spend_micros: money(500),
            ..Sums::default()
        };
        let k = s.kpis(&GUIDE);
        assert_eq!(k.cac, Some(50.0));
        assert_eq!(k.clv_cac, Some(12.0));
    }

    #[test]
    fn zero_denominators_give_no_value() {
        assert_eq!(Sums::default().kpis(&GUIDE), Kpis::default());
        // Spend but no new customers: CAC and CLV:CAC are undefined, ROAS is 0.
        let s = Sums {
            orders: 1,
            gmv_micros: 0,
            ad_spend_micros: money(10),
            ..Sums::default()
        };
        let k = s.kpis(&GUIDE);
        assert_eq!(k.cac, None);
        assert_eq!(k.clv_cac, None);
        assert_eq!(k.roas, Some(0.0));
        assert_eq!(k.cvr, None);
        // New customers acquired for free: CAC 0, so CLV:CAC is undefined, not infinite.
        let free = Sums {
            orders: 1,
            new_customers: 1,
            gmv_micros: money(10),
            ..Sums::default()
        };
        assert_eq!(free.kpis(&GUIDE).cac, Some(0.0));
        assert_eq!(free.kpis(&GUIDE).clv_cac, None);
        assert_eq!(free.kpis(&GUIDE).roas, None);
    }
}
