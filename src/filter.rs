//! What the CRI's list filters have in common.

use std::collections::HashMap;

/// Whether `labels` has every key of the selector, with the same value.
pub fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_selected_label_must_match() {
        let labels = HashMap::from([("a".to_string(), "1".to_string()), ("b".into(), "2".into())]);
        assert!(labels_match(&labels, &HashMap::new()));
        assert!(labels_match(
            &labels,
            &HashMap::from([("a".into(), "1".into())])
        ));
        assert!(!labels_match(
            &labels,
            &HashMap::from([("a".into(), "2".into())])
        ));
        assert!(!labels_match(
            &labels,
            &HashMap::from([("c".into(), "1".into())])
        ));
    }
}
