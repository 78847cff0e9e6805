//! Reading `dashboards/*.ndjson` and checking it the way Kibana's import and Lens would,
//! without a Kibana server: the saved-object envelope, references, the Lens state of every
//! by-value panel, the fields each column uses against the templates, and the panel grid.
//!
//! Checks return every problem found as a sentence instead of stopping at the first, so one
//! run of the test lists everything a dashboard edit broke.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::schema::{Field, Schema};

/// The oldest Kibana the dashboards are authored for. 8.11 because: the saved objects carry
/// `coreMigrationVersion`/`typeMigrationVersion` (8.8+), Lens state uses the `formBased`
/// datasource (8.6+) and the current `lnsMetric` (8.5+), and `last_value` runs as
/// `top_metrics` (8.2+). Newer Kibana (9.x included) upgrades these objects on import through
/// its saved-object migrations; an older one refuses them as "from a newer version".
pub const OLDEST_KIBANA: &str = "8.11.0";
/// What Kibana 8.8 and later write as `coreMigrationVersion`.
pub const CORE_MIGRATION_VERSION: &str = "8.8.0";
/// The dashboard grid is 48 columns wide.
pub const GRID_COLUMNS: u64 = 48;

/// `typeMigrationVersion` as Kibana 8.11 exports each type: the last migration it has for the
/// type (for dashboards, the 8.9.0 migration of by-value panels).
pub fn type_migration_version(object_type: &str) -> Option<&'static str> {
    match object_type {
        "index-pattern" => Some("8.0.0"),
        "dashboard" => Some("8.9.0"),
        _ => None,
    }
}

/// Attributes a dashboard may have: Kibana's dashboard attribute schema forbids unknown keys.
const DASHBOARD_ATTRIBUTES: &[&str] = &[
    "title",
    "description",
    "kibanaSavedObjectMeta",
    "timeRestore",
    "timeFrom",
    "timeTo",
    "refreshInterval",
    "controlGroupInput",
    "panelsJSON",
    "optionsJSON",
    "hits",
    "version",
];

/// The directory of the shipped dashboards.
pub fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// Every `*.ndjson` file in `dashboards/`, sorted, with its text.
pub fn shipped_files() -> Vec<(PathBuf, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .expect("read dashboards/")
        .map(|entry| entry.expect("a dashboards/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (path, text)
        })
        .collect()
}

/// All saved objects of a set of NDJSON texts, in order.
pub struct Catalog {
    pub objects: Vec<Value>,
}

impl Catalog {
    /// Parses every line; a line that is not a JSON object is a problem, not a panic.
    pub fn parse(texts: &[(String, &str)]) -> (Catalog, Vec<String>) {
        let mut objects = Vec::new();
        let mut problems = Vec::new();
        for (file, text) in texts {
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    problems.push(format!("{file}:{}: empty line", n + 1));
                    continue;
                }
                match serde_json::from_str::<Value>(line) {
                    Ok(Value::Object(o)) => objects.push(Value::Object(o)),
                    Ok(other) => problems.push(format!(
                        "{file}:{}: not a JSON object but {}",
                        n + 1,
                        kind(&other)
                    )),
                    Err(e) => problems.push(format!("{file}:{}: invalid JSON: {e}", n + 1)),
                }
            }
        }
        (Catalog { objects }, problems)
    }

    /// The shipped dashboards; panics on a line that does not parse (the offline test says why).
    pub fn shipped() -> Catalog {
        let files = shipped_files();
        let texts: Vec<(String, &str)> = files
            .iter()
            .map(|(p, t)| (p.display().to_string(), t.as_str()))
            .collect();
        let (catalog, problems) = Catalog::parse(&texts);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        catalog
    }

    pub fn of_type<'a>(&'a self, object_type: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |o| o["type"].as_str() == Some(object_type))
    }

    pub fn get(&self, object_type: &str, id: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["type"].as_str() == Some(object_type) && o["id"].as_str() == Some(id))
    }
}

/// One by-value Lens panel of a dashboard.
pub struct Panel {
    pub dashboard: String,
    pub index: String,
    pub title: String,
    pub grid: Grid,
    /// `embeddableConfig.attributes`: the Lens document.
    pub lens: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub x: u64,
    pub y: u64,
    pub w: u64,
    pub h: u64,
}

impl Grid {
    fn overlaps(&self, other: &Grid) -> bool {
        self.x < other.x + other.w
            && other.x < self.x + self.w
            && self.y < other.y + other.h
            && other.y < self.y + self.h
    }
}

/// One `formBased` layer of a Lens panel, columns in `columnOrder`.
pub struct Layer {
    pub id: String,
    pub data_view: String,
    pub columns: Vec<(String, Value)>,
}

impl Layer {
    pub fn column(&self, id: &str) -> Option<&Value> {
        self.columns.iter().find(|(c, _)| c == id).map(|(_, v)| v)
    }
}

/// The panels of a dashboard object. Errors say what is wrong with `panelsJSON` itself.
pub fn panels(dashboard: &Value) -> Result<Vec<Panel>, String> {
    let id = dashboard["id"].as_str().unwrap_or("?").to_owned();
    let raw = dashboard["attributes"]["panelsJSON"]
        .as_str()
        .ok_or_else(|| format!("dashboard {id}: panelsJSON is not a string"))?;
    let parsed: Value = serde_json::from_str(raw)
        .map_err(|e| format!("dashboard {id}: panelsJSON is not JSON: {e}"))?;
    let list = parsed
        .as_array()
        .ok_or_else(|| format!("dashboard {id}: panelsJSON is not an array"))?;
    list.iter()
        .enumerate()
        .map(|(n, p)| {
            let index = p["panelIndex"]
                .as_str()
                .ok_or_else(|| format!("dashboard {id}: panel {n} has no panelIndex"))?
                .to_owned();
            let number = |key: &str| {
                p["gridData"][key].as_u64().ok_or_else(|| {
                    format!("dashboard {id}: panel {index}: gridData.{key} is not a whole number")
                })
            };
            Ok(Panel {
                dashboard: id.clone(),
                title: p["title"].as_str().unwrap_or_default().to_owned(),
                grid: Grid {
                    x: number("x")?,
                    y: number("y")?,
                    w: number("w")?,
                    h: number("h")?,
                },
                lens: p["embeddableConfig"]["attributes"].clone(),
                index,
            })
        })
        .collect()
}

/// The `formBased` layers of a Lens document, each with the data view its reference names.
pub fn layers(lens: &Value) -> Result<Vec<Layer>, String> {
    let layers = lens["state"]["datasourceStates"]["formBased"]["layers"]
        .as_object()
        .ok_or("state.datasourceStates.formBased.layers is missing")?;
    let references = lens["references"].as_array().cloned().unwrap_or_default();
    layers
        .iter()
        .map(|(layer_id, layer)| {
            let name = format!("indexpattern-datasource-layer-{layer_id}");
            let data_view = references
                .iter()
                .find(|r| r["name"].as_str() == Some(name.as_str()))
                .and_then(|r| r["id"].as_str())
                .ok_or_else(|| format!("layer {layer_id} has no reference named {name:?}"))?
                .to_owned();
            let order = layer["columnOrder"]
                .as_array()
                .ok_or_else(|| format!("layer {layer_id} has no columnOrder"))?;
            let columns = order
                .iter()
                .map(|c| {
                    let c = c.as_str().unwrap_or_default().to_owned();
                    let column = layer["columns"][&c].clone();
                    if column.is_null() {
                        Err(format!(
                            "layer {layer_id}: columnOrder names {c:?}, which is not a column"
                        ))
                    } else {
                        Ok((c, column))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let listed = layer["columns"].as_object().map_or(0, |c| c.len());
            if listed != columns.len() {
                return Err(format!(
                    "layer {layer_id}: {listed} columns but columnOrder lists {}",
                    columns.len()
                ));
            }
            Ok(Layer {
                id: layer_id.clone(),
                data_view,
                columns,
            })
        })
        .collect()
}

/// Everything wrong with a catalog, as sentences; empty when it would import and render.
pub fn check(catalog: &Catalog, schema: &Schema) -> Vec<String> {
    let mut problems = Vec::new();
    check_envelopes(catalog, &mut problems);
    for view in catalog.of_type("index-pattern") {
        check_data_view(view, schema, &mut problems);
    }
    for dashboard in catalog.of_type("dashboard") {
        check_dashboard(catalog, dashboard, schema, &mut problems);
    }
    problems
}

fn check_envelopes(catalog: &Catalog, problems: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    for object in &catalog.objects {
        let id = object["id"].as_str().unwrap_or_default();
        let object_type = object["type"].as_str().unwrap_or_default();
        let what = format!("{object_type} {id:?}");
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            problems.push(format!(
                "{what}: the id must be a stable, readable [a-z0-9-] name"
            ));
        }
        if !seen.insert(id.to_owned()) {
            problems.push(format!("{what}: the id is used twice"));
        }
        let Some(expected) = type_migration_version(object_type) else {
            problems.push(format!(
                "{what}: unexpected type (only index-pattern and dashboard are shipped)"
            ));
            continue;
        };
        if !object["attributes"].is_object() {
            problems.push(format!("{what}: attributes is not an object"));
        }
        if !object["references"].is_array() {
            problems.push(format!("{what}: references is not an array"));
        }
        if object["coreMigrationVersion"].as_str() != Some(CORE_MIGRATION_VERSION) {
            problems.push(format!(
                "{what}: coreMigrationVersion is {}, expected \"{CORE_MIGRATION_VERSION}\"",
                object["coreMigrationVersion"]
            ));
        }
        if object["typeMigrationVersion"].as_str() != Some(expected) {
            problems.push(format!(
                "{what}: typeMigrationVersion is {}, expected \"{expected}\" (Kibana {OLDEST_KIBANA})",
                object["typeMigrationVersion"]
            ));
        }
        if object.get("migrationVersion").is_some() {
            problems.push(format!(
                "{what}: migrationVersion is the pre-8.8 field; use typeMigrationVersion"
            ));
        }
        for reference in object["references"].as_array().into_iter().flatten() {
            let (rtype, rid) = (
                reference["type"].as_str().unwrap_or_default(),
                reference["id"].as_str().unwrap_or_default(),
            );
            if reference["name"].as_str().unwrap_or_default().is_empty() {
                problems.push(format!("{what}: a reference has no name: {reference}"));
            }
            if catalog.get(rtype, rid).is_none() {
                problems.push(format!(
                    "{what}: reference {:?} points at {rtype} {rid:?}, which is not in the files",
                    reference["name"].as_str().unwrap_or_default()
                ));
            }
        }
    }
}

fn check_data_view(view: &Value, schema: &Schema, problems: &mut Vec<String>) {
    let id = view["id"].as_str().unwrap_or_default();
    let attributes = &view["attributes"];
    let Some(title) = attributes["title"].as_str() else {
        problems.push(format!("data view {id:?}: no title (index pattern)"));
        return;
    };
    let fields = schema.fields(title);
    if fields.is_empty() {
        problems.push(format!(
            "data view {id:?}: no template maps the streams of {title:?}"
        ));
        return;
    }
    match attributes["timeFieldName"].as_str() {
        Some(time) => {
            if fields.get(time).map(|f| f.kibana_type) != Some("date") {
                problems.push(format!(
                    "data view {id:?}: time field {time:?} is not a date in the template"
                ));
            }
        }
        None => problems.push(format!("data view {id:?}: no timeFieldName")),
    }
    for key in [
        "fields",
        "fieldFormatMap",
        "runtimeFieldMap",
        "sourceFilters",
    ] {
        if let Some(raw) = attributes[key].as_str()
            && serde_json::from_str::<Value>(raw).is_err()
        {
            problems.push(format!("data view {id:?}: {key} is not JSON: {raw:?}"));
        }
    }
    if let Some(formats) = attributes["fieldFormatMap"]
        .as_str()
        .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
    {
        for field in formats.as_object().into_iter().flat_map(|f| f.keys()) {
            if !fields.contains_key(field) {
                problems.push(format!(
                    "data view {id:?}: a format is set for {field:?}, which is not mapped"
                ));
            }
        }
    }
    if attributes["runtimeFieldMap"]
        .as_str()
        .is_some_and(|raw| raw != "{}")
    {
        problems.push(format!(
            "data view {id:?}: runtime fields need painless, which the engines here lack"
        ));
    }
}

fn check_dashboard(
    catalog: &Catalog,
    dashboard: &Value,
    schema: &Schema,
    problems: &mut Vec<String>,
) {
    let id = dashboard["id"].as_str().unwrap_or_default();
    let attributes = &dashboard["attributes"];
    for key in attributes.as_object().into_iter().flat_map(|a| a.keys()) {
        if !DASHBOARD_ATTRIBUTES.contains(&key.as_str()) {
            problems.push(format!(
                "dashboard {id:?}: attribute {key:?} is not a dashboard attribute"
            ));
        }
    }
    if attributes["title"].as_str().unwrap_or_default().is_empty() {
        problems.push(format!("dashboard {id:?}: no title"));
    }
    for key in ["optionsJSON", "panelsJSON"] {
        if attributes[key]
            .as_str()
            .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
            .is_none()
        {
            problems.push(format!("dashboard {id:?}: {key} is not a JSON string"));
        }
    }
    match attributes["kibanaSavedObjectMeta"]["searchSourceJSON"]
        .as_str()
        .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
    {
        Some(source) => {
            if source["query"]["query"]
                .as_str()
                .is_some_and(|q| !q.is_empty())
                || source["filter"].as_array().is_some_and(|f| !f.is_empty())
            {
                problems.push(format!(
                    "dashboard {id:?}: a dashboard-wide query or filter would not be in the live check"
                ));
            }
        }
        None => problems.push(format!(
            "dashboard {id:?}: kibanaSavedObjectMeta.searchSourceJSON is not a JSON string"
        )),
    }

    let panels = match panels(dashboard) {
        Ok(panels) => panels,
        Err(problem) => {
            problems.push(problem);
            return;
        }
    };
    if panels.is_empty() {
        problems.push(format!("dashboard {id:?}: no panels"));
    }
    let raw_panels: Vec<Value> = attributes["panelsJSON"]
        .as_str()
        .and_then(|raw| serde_json::from_str(raw).ok())
        .unwrap_or_default();

    // References: the dashboard's own list must be exactly its panels' references, each
    // prefixed with the panel's index (what Kibana's export writes and its import reads).
    let mut expected_refs = BTreeSet::new();
    let mut indexes = BTreeSet::new();
    for (panel, raw) in panels.iter().zip(&raw_panels) {
        let what = format!("dashboard {id:?}, panel {:?}", panel.index);
        if !indexes.insert(panel.index.clone()) {
            problems.push(format!("{what}: panelIndex is used twice"));
        }
        if raw["gridData"]["i"].as_str() != Some(panel.index.as_str()) {
            problems.push(format!("{what}: gridData.i differs from panelIndex"));
        }
        if raw["type"].as_str() != Some("lens") {
            problems.push(format!("{what}: not a Lens panel ({})", raw["type"]));
            continue;
        }
        if raw["version"].as_str() != Some(OLDEST_KIBANA) {
            problems.push(format!(
                "{what}: version is {}, expected \"{OLDEST_KIBANA}\"",
                raw["version"]
            ));
        }
        if panel.title.is_empty() {
            problems.push(format!("{what}: no title"));
        }
        if panel.lens["description"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            problems.push(format!(
                "{what}: no description (the README's panel list is checked against it)"
            ));
        }
        if !panel.lens.is_object() {
            problems.push(format!(
                "{what}: not by value (embeddableConfig.attributes is missing)"
            ));
            continue;
        }
        for reference in panel.lens["references"].as_array().into_iter().flatten() {
            expected_refs.insert((
                reference["type"].as_str().unwrap_or_default().to_owned(),
                reference["id"].as_str().unwrap_or_default().to_owned(),
                format!(
                    "{}:{}",
                    panel.index,
                    reference["name"].as_str().unwrap_or_default()
                ),
            ));
        }
        let g = panel.grid;
        if g.w == 0 || g.h == 0 || g.x + g.w > GRID_COLUMNS {
            problems.push(format!(
                "{what}: grid {g:?} is empty or wider than {GRID_COLUMNS} columns"
            ));
        }
        check_lens(catalog, &what, &panel.lens, schema, problems);
    }
    let actual_refs: BTreeSet<(String, String, String)> = dashboard["references"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["type"].as_str().unwrap_or_default().to_owned(),
                r["id"].as_str().unwrap_or_default().to_owned(),
                r["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for missing in expected_refs.difference(&actual_refs) {
        problems.push(format!(
            "dashboard {id:?}: references lack {missing:?}, which a panel uses"
        ));
    }
    for extra in actual_refs.difference(&expected_refs) {
        problems.push(format!(
            "dashboard {id:?}: reference {extra:?} belongs to no panel"
        ));
    }
    for (n, a) in panels.iter().enumerate() {
        for b in &panels[n + 1..] {
            if a.grid.overlaps(&b.grid) {
                problems.push(format!(
                    "dashboard {id:?}: panels {:?} {:?} and {:?} {:?} overlap",
                    a.index, a.grid, b.index, b.grid
                ));
            }
        }
    }
}

/// The operations the panels may use, with the Kibana field types each accepts (Lens's own
/// rules) and whether it makes buckets. The live check translates exactly these.
fn operation(name: &str) -> Option<(&'static [&'static str], bool)> {
    Some(match name {
        "date_histogram" => (&["date"], true),
        "terms" => (&["string", "number", "boolean", "ip"], true),
        "average" | "sum" | "median" => (&["number"], false),
        "min" | "max" => (&["number", "date"], false),
        "unique_count" => (&["string", "number", "boolean", "ip", "date"], false),
        "last_value" => (&["string", "number", "boolean", "ip", "date"], false),
        "count" => (&["string", "number", "boolean", "ip", "date"], false),
        _ => return None,
    })
}

fn check_lens(
    catalog: &Catalog,
    what: &str,
    lens: &Value,
    schema: &Schema,
    problems: &mut Vec<String>,
) {
    if lens["type"].as_str() != Some("lens") {
        problems.push(format!("{what}: attributes.type is not \"lens\""));
    }
    let state = &lens["state"];
    if state["query"]["query"]
        .as_str()
        .is_some_and(|q| !q.is_empty())
        || state["filters"].as_array().is_some_and(|f| !f.is_empty())
    {
        problems.push(format!(
            "{what}: a panel query or filter would not be in the live check"
        ));
    }
    let layers = match layers(lens) {
        Ok(layers) => layers,
        Err(problem) => {
            problems.push(format!("{what}: {problem}"));
            return;
        }
    };
    if layers.is_empty() {
        problems.push(format!("{what}: no layers"));
    }
    for layer in &layers {
        let Some(view) = catalog.get("index-pattern", &layer.data_view) else {
            problems.push(format!(
                "{what}: layer {:?} uses data view {:?}, which is not in the files",
                layer.id, layer.data_view
            ));
            continue;
        };
        let title = view["attributes"]["title"].as_str().unwrap_or_default();
        let time_field = view["attributes"]["timeFieldName"]
            .as_str()
            .unwrap_or_default();
        let fields = schema.fields(title);
        for (column_id, column) in &layer.columns {
            let at = format!("{what}, column {column_id:?}");
            check_column(&at, column, layer, &fields, time_field, problems);
        }
    }
    check_visualization(what, lens, &layers, problems);
}

fn check_column(
    at: &str,
    column: &Value,
    layer: &Layer,
    fields: &BTreeMap<String, Field>,
    time_field: &str,
    problems: &mut Vec<String>,
) {
    let op = column["operationType"].as_str().unwrap_or_default();
    let Some((accepted, bucketed)) = operation(op) else {
        problems.push(format!("{at}: operation {op:?} is not one the checks know"));
        return;
    };
    if column["isBucketed"].as_bool() != Some(bucketed) {
        problems.push(format!("{at}: isBucketed must be {bucketed} for {op}"));
    }
    if column["label"].as_str().unwrap_or_default().is_empty() {
        problems.push(format!("{at}: no label"));
    }
    let source = column["sourceField"].as_str().unwrap_or_default();
    let data_type = column["dataType"].as_str().unwrap_or_default();
    if op == "count" && source == "___records___" {
        if data_type != "number" {
            problems.push(format!("{at}: a count's dataType is \"number\""));
        }
    } else {
        match fields.get(source) {
            None => problems.push(format!(
                "{at}: field {source:?} is not in the template of its data view"
            )),
            Some(field) => {
                if !accepted.contains(&field.kibana_type) {
                    problems.push(format!(
                        "{at}: {op} does not accept {source:?}, a {} field",
                        field.es_type
                    ));
                }
                if field.time_series_metric.as_deref() == Some("counter")
                    && matches!(op, "average" | "sum" | "min" | "max" | "median")
                {
                    problems.push(format!(
                        "{at}: Lens offers no {op} of {source:?}, a time-series counter"
                    ));
                }
                if !field.aggregatable {
                    problems.push(format!(
                        "{at}: {source:?} ({}) cannot be aggregated",
                        field.es_type
                    ));
                }
                let expected = match op {
                    "count" | "unique_count" => "number",
                    _ => field.kibana_type,
                };
                if data_type != expected {
                    problems.push(format!(
                        "{at}: dataType is {data_type:?} but {op} of {source:?} gives {expected:?}"
                    ));
                }
            }
        }
    }
    if let Some(scale) = column.get("timeScale")
        && !matches!(scale.as_str(), Some("s" | "m" | "h" | "d"))
    {
        problems.push(format!("{at}: timeScale {scale} is not s, m, h or d"));
    }
    if let Some(filter) = column.get("filter") {
        // The one column filter Lens sets on its own (last value "has a value"); the live
        // check translates only this form.
        let expected = format!("{source}: *");
        if filter["language"].as_str() != Some("kuery")
            || filter["query"].as_str() != Some(&expected)
        {
            problems.push(format!(
                "{at}: filter {filter} is not the exists filter {expected:?}"
            ));
        }
    }
    let params = &column["params"];
    match op {
        "date_histogram" if source != time_field => problems.push(format!(
            "{at}: histogram over {source:?}, not the data view's time field {time_field:?}"
        )),
        "last_value" => {
            let sort = params["sortField"].as_str().unwrap_or_default();
            if fields.get(sort).map(|f| f.kibana_type) != Some("date") {
                problems.push(format!("{at}: sortField {sort:?} is not a date field"));
            }
            if params["showArrayValues"].as_bool() == Some(true) {
                problems.push(format!(
                    "{at}: showArrayValues shows every value of the newest document, not one"
                ));
            }
        }
        "terms" => {
            if params["size"].as_u64().is_none_or(|s| s == 0) {
                problems.push(format!("{at}: terms needs a size"));
            }
            match params["orderBy"]["type"].as_str() {
                Some("alphabetical") => {}
                Some("column") => {
                    let by = params["orderBy"]["columnId"].as_str().unwrap_or_default();
                    match layer.column(by) {
                        Some(target) if target["isBucketed"].as_bool() == Some(false) => {
                            if target.get("filter").is_some() {
                                problems
                                    .push(format!("{at}: ordered by {by:?}, a filtered metric"));
                            }
                        }
                        _ => problems.push(format!(
                            "{at}: ordered by {by:?}, which is not a metric of the layer"
                        )),
                    }
                }
                other => problems.push(format!("{at}: orderBy type {other:?} is not supported")),
            }
            if !matches!(params["orderDirection"].as_str(), Some("asc" | "desc")) {
                problems.push(format!("{at}: orderDirection is not asc or desc"));
            }
        }
        _ => {}
    }
}

fn check_visualization(what: &str, lens: &Value, layers: &[Layer], problems: &mut Vec<String>) {
    let mut found = Vec::new();
    let vis = &lens["state"]["visualization"];
    let layer = |id: &str| layers.iter().find(|l| l.id == id);
    let bucketed = |l: &Layer, c: &str| l.column(c).and_then(|c| c["isBucketed"].as_bool());
    // Whether `accessor` names a column of `l` that is (or is not) a bucket column.
    let accessor_problem = |l: &Layer, accessor: &Value, role: &str, want_bucket: bool| {
        let Some(c) = accessor.as_str() else {
            return Some(format!("{what}: the {role} accessor is missing"));
        };
        match bucketed(l, c) {
            None => Some(format!(
                "{what}: the {role} accessor {c:?} is not a column of layer {:?}",
                l.id
            )),
            Some(b) if b != want_bucket => Some(format!(
                "{what}: the {role} accessor {c:?} must {}be a bucket column",
                if want_bucket { "" } else { "not " }
            )),
            Some(_) => None,
        }
    };
    let mut expect = |l: &Layer, accessor: &Value, role: &str, want_bucket: bool| {
        if let Some(problem) = accessor_problem(l, accessor, role, want_bucket) {
            found.push(problem);
        }
    };
    match lens["visualizationType"].as_str() {
        Some("lnsXY") => {
            let vis_layers = vis["layers"].as_array().cloned().unwrap_or_default();
            if vis_layers.len() != layers.len() {
                problems.push(format!("{what}: XY layers and data layers differ in number"));
            }
            for vl in &vis_layers {
                let Some(l) = vl["layerId"].as_str().and_then(layer) else {
                    problems.push(format!("{what}: XY layer {} has no data layer", vl["layerId"]));
                    continue;
                };
                expect(l, &vl["xAccessor"], "x", true);
                let accessors = vl["accessors"].as_array().cloned().unwrap_or_default();
                if accessors.is_empty() {
                    problems.push(format!("{what}: XY layer {:?} shows no values", l.id));
                }
                for a in &accessors {
                    expect(l, a, "y", false);
                }
                if !vl["splitAccessor"].is_null() {
                    expect(l, &vl["splitAccessor"], "split", true);
                }
            }
        }
        Some("lnsDatatable") => match vis["layerId"].as_str().and_then(layer) {
            None => problems.push(format!("{what}: the table's layer is not a data layer")),
            Some(l) => {
                let shown: BTreeSet<&str> = vis["columns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["columnId"].as_str())
                    .collect();
                let all: BTreeSet<&str> = l.columns.iter().map(|(c, _)| c.as_str()).collect();
                if shown != all {
                    problems.push(format!(
                        "{what}: the table shows {shown:?} but the layer has {all:?}"
                    ));
                }
            }
        },
        Some("lnsMetric") => match vis["layerId"].as_str().and_then(layer) {
            None => problems.push(format!("{what}: the metric's layer is not a data layer")),
            Some(l) => {
                expect(l, &vis["metricAccessor"], "metric", false);
                if !vis["breakdownByAccessor"].is_null() {
                    expect(l, &vis["breakdownByAccessor"], "breakdown", true);
                }
            }
        },
        other => problems.push(format!(
            "{what}: visualization {other:?} is not one the checks know (lnsXY, lnsDatatable, lnsMetric)"
        )),
    }
    problems.extend(found);
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
