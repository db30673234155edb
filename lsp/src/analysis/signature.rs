//! Signature help for the call around the cursor.

use tower_lsp::lsp_types::{
    ParameterInformation, ParameterLabel, SignatureHelp, SignatureInformation,
};

use super::doc::{Doc, Receiver, Spot};
use super::{free_fn, markdown, method_fn};
use crate::stdlib;

/// Signature help for the call around `offset`.
pub fn signature_help(doc: &Doc<'_>, offset: usize) -> Option<SignatureHelp> {
    let before = match doc.spot(offset) {
        Spot::Comment => return None,
        Spot::Str(i) => i,
        Spot::Code { before, .. } => before,
    };
    let call = doc.call_before(before)?;
    let f = match &call.receiver {
        Receiver::Module(alias) => {
            let m = doc
                .outline
                .import_for(alias)
                .and_then(|i| stdlib::by_path(&i.path))?;
            let f = m.function(&call.name)?;
            let sig = format!("{alias}::{}({})", f.name, f.params.join(", "));
            return Some(single_signature(sig, f.params.clone(), &f.doc, call.arg));
        }
        Receiver::None => {
            if let Some(f) = doc.user_fn(&call.name) {
                let sig = format!("{}({})", f.name, f.params.join(", "));
                return Some(single_signature(sig, f.params.clone(), &f.doc, call.arg));
            }
            free_fn(&call.name)?
        }
        Receiver::Method => {
            let name_idx = doc
                .code
                .partition_point(|t| t.start < call.name_range.start);
            method_fn(&call.name, doc.chain_type(name_idx.checked_sub(1)?)?)?
        }
    };
    let params: Vec<Vec<String>> = f
        .overloads
        .iter()
        .map(|o| {
            o.iter()
                .map(|(n, t)| format!("{n}: {}", t.label()))
                .collect()
        })
        .collect();
    let active = params
        .iter()
        .position(|p| p.len() > call.arg)
        .unwrap_or(params.len().saturating_sub(1));
    let signatures = f
        .signatures()
        .into_iter()
        .zip(params)
        .map(|(label, ps)| SignatureInformation {
            label,
            documentation: Some(markdown(f.doc.to_string())),
            parameters: Some(
                ps.into_iter()
                    .map(|p| ParameterInformation {
                        label: ParameterLabel::Simple(p),
                        documentation: None,
                    })
                    .collect(),
            ),
            active_parameter: None,
        })
        .collect();
    Some(SignatureHelp {
        signatures,
        active_signature: Some(active as u32),
        active_parameter: Some(call.arg as u32),
    })
}

fn single_signature(label: String, params: Vec<String>, doc: &str, arg: usize) -> SignatureHelp {
    SignatureHelp {
        signatures: vec![SignatureInformation {
            label,
            documentation: (!doc.is_empty()).then(|| markdown(doc.to_string())),
            parameters: Some(
                params
                    .into_iter()
                    .map(|p| ParameterInformation {
                        label: ParameterLabel::Simple(p),
                        documentation: None,
                    })
                    .collect(),
            ),
            active_parameter: None,
        }],
        active_signature: Some(0),
        active_parameter: Some(arg as u32),
    }
}
