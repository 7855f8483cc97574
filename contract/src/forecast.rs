//! What a model declares about its input in its ONNX file's `metadata_props`, and the pure
//! arithmetic of recursive forecasts: civil dates, periods, calendar features and the rows
//! of each step.
//!
//! Two entries may be declared (`ModelProto.metadata_props`, key → value):
//!
//! - [`COLUMNS_KEY`] `manymodels.columns`: a JSON array of strings, the names of the
//!   input's feature columns in order, so a record may send its features by name.
//! - [`FORECAST_KEY`] `manymodels.forecast`: a JSON object ([`ForecastSpec`]) saying how the
//!   model forecasts its own output step by step: one [`Feature`] per input column (a lag of
//!   the series, a calendar feature of the step's date, or an input the record supplies),
//!   the longest horizon, and optionally the series' frequency.
//!
//! The engine reads both at load ([`Declaration::from_metadata`], checked against the
//! input's width) and refuses a model whose declaration is malformed; the scorer answers
//! forecasts with [`Plan`]. Dates are proleptic Gregorian `YYYY-MM-DD` (years 1 to 9999),
//! computed here from days since 1970-01-01 (no calendar dependency), and agree with
//! Python's `datetime` (the tests hold a table of its answers).
//!
//! Nothing here does I/O.

use serde::{Deserialize, Serialize};

/// The `metadata_props` key of a model's column names.
pub const COLUMNS_KEY: &str = "manymodels.columns";
/// The `metadata_props` key of a model's forecast declaration.
pub const FORECAST_KEY: &str = "manymodels.forecast";

/// The longest lag a declaration may use.
pub const MAX_LAG: u32 = 10_000;

/// What a model declares: its columns' names and how it forecasts; both optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Declaration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<ForecastSpec>,
}

/// How a model forecasts recursively (`manymodels.forecast`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastSpec {
    /// The series' frequency; a request may give it instead (or override it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<Frequency>,
    /// The most steps one forecast may ask for (at least 1).
    pub max_horizon: u32,
    /// One entry per input column, in order.
    pub features: Vec<Feature>,
}

/// What one input column of a forecasting model holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Feature {
    /// The series' value `k` steps back (k ≥ 1): from the history, then the model's own
    /// predictions once past it.
    Lag(u32),
    /// A calendar feature of the step's date.
    Calendar(Calendar),
    /// A value the record supplies under this name, held over the horizon.
    Input(String),
}

/// The calendar features of a date, each a small whole number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Calendar {
    Year,
    /// 1 to 4.
    Quarter,
    /// 1 to 12.
    Month,
    /// The ISO 8601 week (1 to 53), as Python's `date.isocalendar()[1]`.
    WeekOfYear,
    /// 1 to 366.
    DayOfYear,
    /// The day of the month, 1 to 31.
    Day,
    /// Monday = 0 to Sunday = 6, as Python's `date.weekday()`.
    DayOfWeek,
}

impl Calendar {
    /// This feature of `date`.
    pub fn of(self, date: Date) -> u32 {
        match self {
            Calendar::Year => date.year as u32,
            Calendar::Quarter => (date.month as u32 - 1) / 3 + 1,
            Calendar::Month => date.month as u32,
            Calendar::WeekOfYear => date.iso_week(),
            Calendar::DayOfYear => date.day_of_year(),
            Calendar::Day => date.day as u32,
            Calendar::DayOfWeek => date.weekday(),
        }
    }
}

impl Declaration {
    /// The declaration from the `metadata_props` values of [`COLUMNS_KEY`] and
    /// [`FORECAST_KEY`] (`None`: not declared), checked against the input's feature count
    /// (`width`, when the model fixes it). Errors name the key and what is wrong.
    pub fn from_metadata(
        columns: Option<&str>,
        forecast: Option<&str>,
        width: Option<usize>,
    ) -> Result<Declaration, String> {
        let columns = columns
            .map(|text| parse_columns(text, width))
            .transpose()
            .map_err(|e| format!("{COLUMNS_KEY}: {e}"))?;
        let forecast = forecast
            .map(|text| ForecastSpec::parse(text, width))
            .transpose()
            .map_err(|e| format!("{FORECAST_KEY}: {e}"))?;
        if let (Some(columns), Some(forecast)) = (&columns, &forecast)
            && columns.len() != forecast.features.len()
        {
            return Err(format!(
                "{COLUMNS_KEY} names {} columns but {FORECAST_KEY} declares {} features",
                columns.len(),
                forecast.features.len()
            ));
        }
        Ok(Declaration { columns, forecast })
    }

    /// Whether the model declares nothing.
    pub fn is_empty(&self) -> bool {
        self.columns.is_none() && self.forecast.is_none()
    }

    /// The number of feature columns the declaration implies, if it says.
    pub fn width(&self) -> Option<usize> {
        self.columns
            .as_ref()
            .map(Vec::len)
            .or_else(|| self.forecast.as_ref().map(|f| f.features.len()))
    }

    /// A record's features put in the model's column order: `names` (when the record named
    /// its values) are matched against the declared columns, each exactly once; without
    /// declared columns, or without names, the values are taken in the order sent. Errors
    /// are the record's own (400).
    pub fn arrange(
        &self,
        values: &[f64],
        names: Option<&[String]>,
        width: usize,
    ) -> Result<Vec<f32>, String> {
        let row = match (names, &self.columns) {
            (Some(names), Some(columns)) => {
                if names.len() != values.len() {
                    return Err(format!(
                        "{} column names for {} values",
                        names.len(),
                        values.len()
                    ));
                }
                reorder(values, names, columns)?
            }
            (Some(names), None) if names.len() != values.len() => {
                return Err(format!(
                    "{} column names for {} values",
                    names.len(),
                    values.len()
                ));
            }
            _ => values.to_vec(),
        };
        if row.len() != width {
            return Err(format!("{} features, the model takes {width}", row.len()));
        }
        finite_f32(&row)
    }
}

/// `values` named by `names`, in the order of `wanted`: every wanted name exactly once.
fn reorder(values: &[f64], names: &[String], wanted: &[String]) -> Result<Vec<f64>, String> {
    let mut row = vec![None; wanted.len()];
    for (name, &value) in names.iter().zip(values) {
        let at = wanted
            .iter()
            .position(|w| w == name)
            .ok_or_else(|| format!("unknown column '{}'", truncate(name)))?;
        if row[at].replace(value).is_some() {
            return Err(format!("column '{}' given twice", truncate(name)));
        }
    }
    row.iter()
        .zip(wanted)
        .map(|(value, name)| value.ok_or_else(|| format!("missing column '{name}'")))
        .collect()
}

/// Values as the model's `f32`s (round to nearest, as numpy's `astype(float32)`); a value
/// that is not finite, or not finite as an `f32`, is refused.
fn finite_f32(values: &[f64]) -> Result<Vec<f32>, String> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let f = v as f32;
            if f.is_finite() {
                Ok(f)
            } else {
                Err(format!("value {i} ({v}) is not a finite FP32 number"))
            }
        })
        .collect()
}

fn truncate(text: &str) -> String {
    crate::truncate_for_message(text)
}

fn parse_columns(text: &str, width: Option<usize>) -> Result<Vec<String>, String> {
    let columns: Vec<String> =
        serde_json::from_str(text).map_err(|e| format!("expected a JSON array of strings: {e}"))?;
    if let Some(width) = width
        && columns.len() != width
    {
        return Err(format!(
            "names {} columns, the input has {width} features",
            columns.len()
        ));
    }
    for (i, name) in columns.iter().enumerate() {
        if name.is_empty() {
            return Err(format!("column {i} has an empty name"));
        }
        if columns[..i].contains(name) {
            return Err(format!("column '{}' is named twice", truncate(name)));
        }
    }
    Ok(columns)
}

impl ForecastSpec {
    /// Parses and checks a declaration: at least one feature, a horizon of at least 1, lags
    /// from 1 to [`MAX_LAG`], distinct non-empty input names, as many features as the
    /// input's width (when known).
    pub fn parse(text: &str, width: Option<usize>) -> Result<ForecastSpec, String> {
        let spec: ForecastSpec = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if spec.max_horizon == 0 {
            return Err("max_horizon must be at least 1".into());
        }
        if spec.features.is_empty() {
            return Err("no features".into());
        }
        if let Some(width) = width
            && spec.features.len() != width
        {
            return Err(format!(
                "declares {} features, the input has {width}",
                spec.features.len()
            ));
        }
        let mut inputs = Vec::new();
        for (i, feature) in spec.features.iter().enumerate() {
            match feature {
                Feature::Lag(0) => return Err(format!("feature {i}: lag 0 (lags start at 1)")),
                Feature::Lag(k) if *k > MAX_LAG => {
                    return Err(format!("feature {i}: lag {k} is over {MAX_LAG}"));
                }
                Feature::Input(name) if name.is_empty() => {
                    return Err(format!("feature {i}: an input with an empty name"));
                }
                Feature::Input(name) if inputs.contains(&name) => {
                    return Err(format!("feature {i}: input '{}' twice", truncate(name)));
                }
                Feature::Input(name) => inputs.push(name),
                _ => {}
            }
        }
        Ok(spec)
    }

    /// The longest lag (0 without lags): the history must be at least this long.
    pub fn max_lag(&self) -> usize {
        self.features
            .iter()
            .filter_map(|f| match f {
                Feature::Lag(k) => Some(*k as usize),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// The names of the `input` features, in column order.
    pub fn inputs(&self) -> impl Iterator<Item = &str> {
        self.features.iter().filter_map(|f| match f {
            Feature::Input(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Checks a forecast asked of this model and prepares it: the frequency (the
    /// request's, else the declared one), the history's dates (each on the frequency, one
    /// period apart, ascending) and values (finite, at least [`ForecastSpec::max_lag`]),
    /// the horizon (1 to `max_horizon`), and the record's inputs (`values`, named by
    /// `names` or in the order of the `input` features). Errors are the record's (400).
    pub fn plan(
        &self,
        horizon: u32,
        frequency: Option<&str>,
        dates: &[String],
        history: &[f64],
        values: &[f64],
        names: Option<&[String]>,
    ) -> Result<Plan, String> {
        if horizon == 0 || horizon > self.max_horizon {
            return Err(format!(
                "forecast_horizon {horizon}: the model forecasts 1 to {} steps",
                self.max_horizon
            ));
        }
        let frequency = match frequency {
            Some(text) => Frequency::parse(text)?,
            None => self.frequency.ok_or(
                "the model declares no frequency: the record must give date_freq".to_string(),
            )?,
        };
        if dates.len() != history.len() {
            return Err(format!(
                "the history has {} dates and {} values",
                dates.len(),
                history.len()
            ));
        }
        let max_lag = self.max_lag();
        if history.len() < max_lag.max(1) {
            return Err(format!(
                "the history has {} values, the model needs at least {}",
                history.len(),
                max_lag.max(1)
            ));
        }
        let mut previous: Option<Date> = None;
        for text in dates {
            let date = Date::parse(text)?;
            if !frequency.holds(date) {
                return Err(format!("date {date} is not on the frequency {frequency}"));
            }
            if let Some(previous) = previous {
                let expected = frequency.next(previous)?;
                if date != expected {
                    return Err(format!(
                        "date {date} follows {previous}: expected {expected} (one {frequency} period later)"
                    ));
                }
            }
            previous = Some(date);
        }
        let last = previous.expect("the history is not empty");
        let mut steps = Vec::with_capacity(horizon as usize);
        let mut date = last;
        for _ in 0..horizon {
            date = frequency.next(date)?;
            steps.push(date);
        }
        let history = finite_f32(history).map_err(|e| format!("history: {e}"))?;
        let wanted: Vec<String> = self.inputs().map(str::to_string).collect();
        let inputs = match names {
            Some(names) => {
                if names.len() != values.len() {
                    return Err(format!(
                        "{} column names for {} values",
                        names.len(),
                        values.len()
                    ));
                }
                reorder(values, names, &wanted)?
            }
            None if values.len() != wanted.len() => {
                return Err(format!(
                    "{} features, the model's forecast takes {} inputs ({})",
                    values.len(),
                    wanted.len(),
                    wanted.join(", ")
                ));
            }
            None => values.to_vec(),
        };
        let inputs = finite_f32(&inputs)?;
        Ok(Plan {
            dates: steps,
            series: history,
            inputs,
        })
    }

    /// Step `step`'s row (0-based): each lag from the series so far (history, then the
    /// predictions pushed with [`Plan::push`]), each calendar feature of the step's date,
    /// each input as given.
    pub fn row(&self, plan: &Plan, step: usize) -> Vec<f32> {
        let date = plan.dates[step];
        let mut inputs = plan.inputs.iter();
        self.features
            .iter()
            .map(|feature| match feature {
                Feature::Lag(k) => plan.series[plan.series.len() - *k as usize],
                Feature::Calendar(c) => c.of(date) as f32,
                Feature::Input(_) => *inputs.next().expect("one value per input"),
            })
            .collect()
    }
}

/// A forecast being run: the steps' dates, the series so far (history then predictions),
/// the inputs held over the horizon.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub dates: Vec<Date>,
    pub series: Vec<f32>,
    pub inputs: Vec<f32>,
}

impl Plan {
    /// Feeds a step's prediction back as the series' next value.
    pub fn push(&mut self, prediction: f32) {
        self.series.push(prediction);
    }

    /// The predictions so far (the series past the history).
    pub fn predictions(&self, history: usize) -> &[f32] {
        &self.series[history..]
    }

    /// The steps' dates as `YYYY-MM-DD`.
    pub fn date_texts(&self) -> Vec<String> {
        self.dates.iter().map(Date::to_string).collect()
    }
}

/// A series' frequency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Frequency {
    /// `D`: every day.
    Daily,
    /// `W-MON` .. `W-SUN` (`W` = `W-SUN`): every week, on this weekday (Monday = 0).
    Weekly(u8),
    /// `MS`: the first of each month.
    MonthStart,
    /// `M` or `ME`: the last day of each month.
    MonthEnd,
}

const WEEKDAYS: [&str; 7] = ["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];

impl Frequency {
    /// `D`, `W`, `W-MON`..`W-SUN`, `MS`, `M` or `ME` (pandas' aliases).
    pub fn parse(text: &str) -> Result<Frequency, String> {
        Ok(match text {
            "D" => Frequency::Daily,
            "W" => Frequency::Weekly(6),
            "MS" => Frequency::MonthStart,
            "M" | "ME" => Frequency::MonthEnd,
            _ => match text
                .strip_prefix("W-")
                .and_then(|day| WEEKDAYS.iter().position(|d| *d == day))
            {
                Some(day) => Frequency::Weekly(day as u8),
                None => {
                    return Err(format!(
                        "unknown frequency '{}' (D, W, W-MON..W-SUN, MS, M or ME)",
                        truncate(text)
                    ));
                }
            },
        })
    }

    /// Whether `date` is one of this frequency's dates.
    pub fn holds(self, date: Date) -> bool {
        match self {
            Frequency::Daily => true,
            Frequency::Weekly(day) => date.weekday() == day as u32,
            Frequency::MonthStart => date.day == 1,
            Frequency::MonthEnd => date.day == days_in_month(date.year, date.month),
        }
    }

    /// The date one period after `date` (which [`Frequency::holds`]); an error past 9999.
    pub fn next(self, date: Date) -> Result<Date, String> {
        let next = match self {
            Frequency::Daily => Date::from_days(date.days() + 1),
            Frequency::Weekly(_) => Date::from_days(date.days() + 7),
            Frequency::MonthStart | Frequency::MonthEnd => {
                let (year, month) = if date.month == 12 {
                    (date.year + 1, 1)
                } else {
                    (date.year, date.month + 1)
                };
                let day = if self == Frequency::MonthStart {
                    1
                } else {
                    days_in_month(year, month)
                };
                Some(Date { year, month, day })
            }
        };
        next.filter(|d| d.year <= 9999)
            .ok_or_else(|| format!("no date after {date} before the year 10000"))
    }
}

impl std::fmt::Display for Frequency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frequency::Daily => write!(f, "D"),
            Frequency::Weekly(day) => write!(f, "W-{}", WEEKDAYS[*day as usize]),
            Frequency::MonthStart => write!(f, "MS"),
            Frequency::MonthEnd => write!(f, "ME"),
        }
    }
}

impl TryFrom<String> for Frequency {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Frequency::parse(&text)
    }
}

impl From<Frequency> for String {
    fn from(frequency: Frequency) -> String {
        frequency.to_string()
    }
}

/// A proleptic Gregorian date, years 1 to 9999.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

fn is_leap(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Date {
    /// `YYYY-MM-DD` exactly (four-digit year from 0001, a real month and day).
    pub fn parse(text: &str) -> Result<Date, String> {
        let bad = || format!("date '{}' is not YYYY-MM-DD", truncate(text));
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return Err(bad());
        }
        let number = |range: std::ops::Range<usize>| -> Result<u32, String> {
            let part = &bytes[range];
            if !part.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            Ok(part.iter().fold(0, |n, b| n * 10 + u32::from(b - b'0')))
        };
        let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
        if year == 0 || !(1..=12).contains(&month) {
            return Err(bad());
        }
        let (year, month) = (year as i32, month as u8);
        if day == 0 || day > u32::from(days_in_month(year, month)) {
            return Err(format!("date '{}' does not exist", truncate(text)));
        }
        Ok(Date {
            year,
            month,
            day: day as u8,
        })
    }

    /// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`: years counted from
    /// March, so the leap day ends each 400-year era's year).
    pub fn days(self) -> i64 {
        let (m, d) = (i64::from(self.month), i64::from(self.day));
        let y = i64::from(self.year) - i64::from(m <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The date `days` after 1970-01-01 (`civil_from_days`); `None` outside years 1..=9999.
    pub fn from_days(days: i64) -> Option<Date> {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        (1..=9999).contains(&year).then_some(Date {
            year: year as i32,
            month,
            day,
        })
    }

    /// Monday = 0 .. Sunday = 6 (1970-01-01 was a Thursday).
    pub fn weekday(self) -> u32 {
        (self.days() + 3).rem_euclid(7) as u32
    }

    /// 1 to 366.
    pub fn day_of_year(self) -> u32 {
        let first = Date {
            year: self.year,
            month: 1,
            day: 1,
        };
        (self.days() - first.days() + 1) as u32
    }

    /// The ISO 8601 week: the week (Monday to Sunday) holding this date's Thursday,
    /// counted in that Thursday's year.
    pub fn iso_week(self) -> u32 {
        let days = self.days();
        let thursday = days - i64::from(self.weekday()) + 3;
        match Date::from_days(thursday) {
            Some(thursday) => (thursday.day_of_year() - 1) / 7 + 1,
            // Only 9999-12-31's week reaches into the year 10000 (it is week 52).
            None => 52,
        }
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (date, days since 1970-01-01, weekday with Monday = 0, ISO week, day of year,
    /// quarter), printed once by Python 3.11's `datetime`:
    /// `d = date.fromisoformat(s); ((d - date(1970, 1, 1)).days, d.weekday(),
    /// d.isocalendar()[1], d.timetuple().tm_yday, (d.month - 1) // 3 + 1)`.
    const PYTHON_DATES: [(&str, i64, u32, u32, u32, u32); 15] = [
        ("1970-01-01", 0, 3, 1, 1, 1),
        ("2000-02-29", 11016, 1, 9, 60, 1),
        ("2004-12-31", 12783, 4, 53, 366, 4),
        ("2005-01-01", 12784, 5, 53, 1, 1),
        ("2008-12-29", 14242, 0, 1, 364, 4),
        ("2010-01-03", 14612, 6, 53, 3, 1),
        ("2015-12-31", 16800, 3, 53, 365, 4),
        ("2016-01-03", 16803, 6, 53, 3, 1),
        ("2020-12-31", 18627, 3, 53, 366, 4),
        ("2021-01-01", 18628, 4, 53, 1, 1),
        ("2024-03-14", 19796, 3, 11, 74, 1),
        ("1899-12-31", -25568, 6, 52, 365, 4),
        ("2400-02-29", 157113, 1, 9, 60, 1),
        ("0001-01-01", -719162, 0, 1, 1, 1),
        ("9999-12-31", 2932896, 4, 52, 365, 4),
    ];

    /// (frequency, date, the next period), printed once by Python's `datetime` (`+
    /// timedelta(days=1 or 7)`; month ends with `calendar.monthrange`).
    const PYTHON_NEXT: [(&str, &str, &str); 8] = [
        ("D", "2024-02-28", "2024-02-29"),
        ("D", "2023-12-31", "2024-01-01"),
        ("W-THU", "2024-12-26", "2025-01-02"),
        ("W", "2024-02-25", "2024-03-03"),
        ("MS", "2024-12-01", "2025-01-01"),
        ("ME", "2024-01-31", "2024-02-29"),
        ("M", "2023-11-30", "2023-12-31"),
        ("ME", "2024-02-29", "2024-03-31"),
    ];

    #[test]
    fn dates_agree_with_python_datetime() {
        for (text, days, weekday, week, yday, quarter) in PYTHON_DATES {
            let date = Date::parse(text).unwrap();
            assert_eq!(date.to_string(), text);
            assert_eq!(date.days(), days, "{text}");
            assert_eq!(Date::from_days(days), Some(date), "{text}");
            assert_eq!(Calendar::DayOfWeek.of(date), weekday, "{text}");
            assert_eq!(Calendar::WeekOfYear.of(date), week, "{text}");
            assert_eq!(Calendar::DayOfYear.of(date), yday, "{text}");
            assert_eq!(Calendar::Quarter.of(date), quarter, "{text}");
            assert_eq!(Calendar::Month.of(date), u32::from(date.month));
            assert_eq!(Calendar::Day.of(date), u32::from(date.day));
            assert_eq!(Calendar::Year.of(date), date.year as u32);
        }
        for (frequency, from, to) in PYTHON_NEXT {
            let frequency = Frequency::parse(frequency).unwrap();
            let from = Date::parse(from).unwrap();
            assert!(frequency.holds(from), "{frequency} {from}");
            assert_eq!(frequency.next(from).unwrap().to_string(), to);
        }
    }

    #[test]
    fn every_day_round_trips_through_its_day_number() {
        let mut previous = Date::from_days(-719_162).unwrap();
        assert_eq!(previous.to_string(), "0001-01-01");
        for days in -719_161..=2_932_896 {
            let date = Date::from_days(days).unwrap();
            assert_eq!(date.days(), days);
            assert!(date > previous);
            assert_eq!((date.weekday() + 7 - previous.weekday()) % 7, 1);
            previous = date;
        }
        assert_eq!(Date::from_days(2_932_897), None);
        assert_eq!(Date::from_days(-719_163), None);
        assert!(Frequency::Daily.next(previous).is_err());
    }

    #[test]
    fn malformed_and_impossible_dates_are_refused() {
        for bad in [
            "2024-2-01",
            "2024/02/01",
            "0000-01-01",
            "2024-13-01",
            "2024-00-10",
            "2023-02-29",
            "2024-04-31",
            "2024-01-00",
            "+024-01-01",
            "2024-01-01T00",
        ] {
            assert!(Date::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn frequencies_parse_to_their_canonical_names() {
        for (text, canonical) in [
            ("D", "D"),
            ("W", "W-SUN"),
            ("W-THU", "W-THU"),
            ("W-MON", "W-MON"),
            ("MS", "MS"),
            ("M", "ME"),
            ("ME", "ME"),
        ] {
            assert_eq!(Frequency::parse(text).unwrap().to_string(), canonical);
        }
        for bad in ["", "w", "W-THURSDAY", "Q", "H", "2W"] {
            let err = Frequency::parse(bad).unwrap_err();
            assert!(err.contains("unknown frequency"), "{bad}: {err}");
        }
        let thu = Frequency::parse("W-THU").unwrap();
        assert!(!thu.holds(Date::parse("2024-03-15").unwrap()));
        assert!(!Frequency::MonthStart.holds(Date::parse("2024-03-15").unwrap()));
        assert!(!Frequency::MonthEnd.holds(Date::parse("2024-02-28").unwrap()));
        assert!(Frequency::MonthEnd.holds(Date::parse("2023-02-28").unwrap()));
    }

    const SALES: &str = r#"{"frequency": "W-THU", "max_horizon": 12, "features": [{"lag": 1}, {"lag": 2}, {"calendar": "week_of_year"}, {"calendar": "month"}, {"input": "price"}]}"#;

    #[test]
    fn declarations_parse_and_read_back() {
        let declaration = Declaration::from_metadata(
            Some(r#"["lag1", "lag2", "week", "month", "price"]"#),
            Some(SALES),
            Some(5),
        )
        .unwrap();
        let spec = declaration.forecast.as_ref().unwrap();
        assert_eq!(spec.frequency, Some(Frequency::Weekly(3)));
        assert_eq!(spec.max_lag(), 2);
        assert_eq!(spec.inputs().collect::<Vec<_>>(), ["price"]);
        assert_eq!(
            spec.features[2],
            Feature::Calendar(Calendar::WeekOfYear),
            "{spec:?}"
        );
        let json = serde_json::to_string(&declaration).unwrap();
        assert!(json.contains(r#"{"lag":1}"#), "{json}");
        assert!(json.contains(r#""frequency":"W-THU""#), "{json}");
        let back: Declaration = serde_json::from_str(&json).unwrap();
        assert_eq!(back, declaration);
        assert!(
            Declaration::from_metadata(None, None, Some(3))
                .unwrap()
                .is_empty()
        );
        // A dynamic width is not checked.
        Declaration::from_metadata(None, Some(SALES), None).unwrap();
    }

    #[test]
    fn malformed_declarations_are_refused_with_the_reason() {
        let forecast = |features: &str| {
            format!(r#"{{"frequency": "W-THU", "max_horizon": 4, "features": {features}}}"#)
        };
        for (columns, spec, width, says) in [
            (
                Some(r#"["a", "b"]"#),
                None,
                3,
                "names 2 columns, the input has 3",
            ),
            (Some(r#"["a", "a", "b"]"#), None, 3, "named twice"),
            (Some(r#"["a", "", "b"]"#), None, 3, "empty name"),
            (Some(r#"{"a": 1}"#), None, 3, "JSON array of strings"),
            (
                None,
                Some(forecast(r#"[{"lag": 1}]"#)),
                2,
                "declares 1 features, the input has 2",
            ),
            (None, Some(forecast(r#"[{"lag": 0}]"#)), 1, "lag 0"),
            (None, Some(forecast(r#"[{"lag": 10001}]"#)), 1, "over 10000"),
            (None, Some(forecast(r#"[{"lag": -1}]"#)), 1, "invalid value"),
            (
                None,
                Some(forecast(r#"[{"season": 1}]"#)),
                1,
                "unknown variant `season`",
            ),
            (
                None,
                Some(forecast(r#"[{"calendar": "hour"}]"#)),
                1,
                "unknown variant `hour`",
            ),
            (
                None,
                Some(forecast(r#"[{"input": "p"}, {"input": "p"}]"#)),
                2,
                "twice",
            ),
            (None, Some(forecast("[]")), 0, "no features"),
            (
                None,
                Some(r#"{"max_horizon": 0, "features": [{"lag": 1}]}"#.into()),
                1,
                "max_horizon must be at least 1",
            ),
            (
                None,
                Some(r#"{"frequency": "Q", "max_horizon": 2, "features": [{"lag": 1}]}"#.into()),
                1,
                "unknown frequency",
            ),
            (
                None,
                Some(r#"{"max_horizon": 2, "features": [{"lag": 1}], "extra": 1}"#.into()),
                1,
                "unknown field",
            ),
            (
                Some(r#"["a", "b"]"#),
                Some(forecast(r#"[{"lag": 1}]"#)),
                1,
                "names 2 columns",
            ),
        ] {
            let err =
                Declaration::from_metadata(columns, spec.as_deref(), Some(width)).expect_err(says);
            assert!(err.contains(says), "{says}: {err}");
            let key = if err.starts_with(COLUMNS_KEY) {
                COLUMNS_KEY
            } else {
                FORECAST_KEY
            };
            assert!(err.starts_with(key), "{err}");
        }
    }

    #[test]
    fn records_are_arranged_by_column_name() {
        let declaration =
            Declaration::from_metadata(Some(r#"["a", "b", "c"]"#), None, Some(3)).unwrap();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let in_order = declaration.arrange(&[1.0, 2.0, 3.0], None, 3).unwrap();
        assert_eq!(in_order, [1.0, 2.0, 3.0]);
        let named = declaration
            .arrange(&[3.0, 1.0, 2.0], Some(&names(&["c", "a", "b"])), 3)
            .unwrap();
        assert_eq!(named, in_order);
        for (values, cols, says) in [
            (
                vec![1.0, 2.0, 3.0],
                names(&["a", "b", "x"]),
                "unknown column 'x'",
            ),
            (vec![1.0, 2.0], names(&["a", "b"]), "missing column 'c'"),
            (vec![1.0, 2.0, 3.0], names(&["a", "a", "b"]), "given twice"),
            (
                vec![1.0, 2.0, 3.0],
                names(&["a", "b"]),
                "2 column names for 3 values",
            ),
            (
                vec![1.0, f64::NAN, 3.0],
                names(&["a", "b", "c"]),
                "not a finite",
            ),
            (
                vec![1.0, 1e39, 3.0],
                names(&["a", "b", "c"]),
                "not a finite",
            ),
        ] {
            let err = declaration.arrange(&values, Some(&cols), 3).unwrap_err();
            assert!(err.contains(says), "{says}: {err}");
        }
        let err = declaration.arrange(&[1.0, 2.0], None, 3).unwrap_err();
        assert!(err.contains("2 features, the model takes 3"), "{err}");
        // Without declared columns, names are not matched: values go in the order sent.
        let plain = Declaration::default();
        let row = plain
            .arrange(&[3.0, 1.0], Some(&names(&["y", "x"])), 2)
            .unwrap();
        assert_eq!(row, [3.0, 1.0]);
    }

    fn weekly_dates(first: &str, n: usize) -> Vec<String> {
        let mut date = Date::parse(first).unwrap();
        let mut dates = Vec::new();
        for _ in 0..n {
            dates.push(date.to_string());
            date = Frequency::Weekly(3).next(date).unwrap();
        }
        dates
    }

    #[test]
    fn a_plan_builds_each_steps_row_from_history_then_predictions() {
        let spec = ForecastSpec::parse(SALES, Some(5)).unwrap();
        let dates = weekly_dates("2024-12-12", 3);
        let mut plan = spec
            .plan(3, None, &dates, &[10.0, 11.0, 12.0], &[2.5], None)
            .unwrap();
        assert_eq!(
            plan.date_texts(),
            ["2025-01-02", "2025-01-09", "2025-01-16"]
        );
        // 2025-01-02 is in ISO week 1, January.
        assert_eq!(spec.row(&plan, 0), [12.0, 11.0, 1.0, 1.0, 2.5]);
        plan.push(13.5);
        assert_eq!(spec.row(&plan, 1), [13.5, 12.0, 2.0, 1.0, 2.5]);
        plan.push(14.5);
        assert_eq!(spec.row(&plan, 2), [14.5, 13.5, 3.0, 1.0, 2.5]);
        assert_eq!(plan.predictions(3), [13.5, 14.5]);
        // Inputs by name.
        let named = spec
            .plan(
                1,
                None,
                &dates,
                &[10.0, 11.0, 12.0],
                &[2.5],
                Some(&["price".into()]),
            )
            .unwrap();
        assert_eq!(named.inputs, [2.5]);
    }

    #[test]
    fn bad_forecast_asks_are_refused_with_the_reason() {
        let spec = ForecastSpec::parse(SALES, Some(5)).unwrap();
        let dates = weekly_dates("2024-12-12", 3);
        let history = [1.0, 2.0, 3.0];
        let mut gap = dates.clone();
        gap[2] = "2025-01-02".into();
        let mut off_day = dates.clone();
        off_day[0] = "2024-12-13".into();
        for (horizon, frequency, dates, history, inputs, says) in [
            (
                0,
                None,
                dates.clone(),
                &history[..],
                &[1.0][..],
                "1 to 12 steps",
            ),
            (13, None, dates.clone(), &history, &[1.0], "1 to 12 steps"),
            (
                2,
                Some("Q"),
                dates.clone(),
                &history,
                &[1.0],
                "unknown frequency",
            ),
            (
                2,
                None,
                dates[..1].to_vec(),
                &history[..1],
                &[1.0],
                "needs at least 2",
            ),
            (
                2,
                None,
                dates.clone(),
                &history[..2],
                &[1.0],
                "3 dates and 2 values",
            ),
            (2, None, gap, &history, &[1.0], "expected 2024-12-26"),
            (
                2,
                None,
                off_day,
                &history,
                &[1.0],
                "not on the frequency W-THU",
            ),
            (
                2,
                Some("D"),
                dates.clone(),
                &history,
                &[1.0],
                "expected 2024-12-13",
            ),
            (
                2,
                None,
                dates.clone(),
                &[1.0, f64::INFINITY, 3.0],
                &[1.0],
                "history: value 1",
            ),
            (2, None, dates.clone(), &history, &[], "0 features"),
            (
                2,
                None,
                dates.clone(),
                &history,
                &[f64::NAN],
                "not a finite",
            ),
        ] {
            let err = spec
                .plan(horizon, frequency, &dates, history, inputs, None)
                .expect_err(says);
            assert!(err.contains(says), "{says}: {err}");
        }
        let err = spec
            .plan(2, None, &dates, &history, &[1.0], Some(&["cost".into()]))
            .unwrap_err();
        assert!(err.contains("unknown column 'cost'"), "{err}");
        let no_frequency =
            ForecastSpec::parse(r#"{"max_horizon": 2, "features": [{"lag": 1}]}"#, None).unwrap();
        let err = no_frequency
            .plan(1, None, &dates, &history, &[], None)
            .unwrap_err();
        assert!(err.contains("date_freq"), "{err}");
        let monthly = no_frequency
            .plan(
                2,
                Some("MS"),
                &["2024-11-01".into(), "2024-12-01".into()],
                &[1.0, 2.0],
                &[],
                None,
            )
            .unwrap();
        assert_eq!(monthly.date_texts(), ["2025-01-01", "2025-02-01"]);
    }
}
