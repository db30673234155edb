//! Rendering a message: the globals a template sees, and previews for a real contact.

#[allow(unused_imports)]
use super::*;

/// What a template sees: the contact (attributes, score, stage, segments), the trigger,
/// the `vars` passed to `send`, the workflow, and the A/B arms chosen so far in the run.
pub fn template_globals(
    contact: &Value,
    trigger: &Value,
    vars: &Value,
    workflow: &str,
    run: &str,
    variants: Map<String, Value>,
) -> Value {
    json!({
        "contact": contact,
        "trigger": trigger,
        "event": trigger,
        "vars": vars,
        "workflow": {"name": workflow, "run": run},
        "variants": variants,
    })
}

impl Engine {
    /// Render a template for a real contact, as `send` would (without sending).
    pub fn preview(
        &self,
        template: &str,
        channel: &str,
        contact: &Contact,
        vars: Value,
        trigger: Value,
    ) -> Result<Value, EngineError> {
        let state = self.state();
        let globals = template_globals(
            &self.snapshot_of(contact),
            &trigger,
            &vars,
            "preview",
            "preview",
            Map::new(),
        );
        let r = state
            .templates
            .render(template, channel, &globals)
            .map_err(EngineError::Invalid)?;
        let to = state
            .channel_config
            .get(channel)
            .and_then(|c| c.to_attribute())
            .and_then(|a| contact.attributes.get(a))
            .cloned();
        Ok(
            json!({"template": template, "channel": channel, "contact": contact.id, "to": to,
                  "subject": r.subject, "body": r.body, "html": r.html, "fields": r.fields}),
        )
    }
}
