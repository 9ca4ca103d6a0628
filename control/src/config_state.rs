//! The config in force: the objects of the last read of the directory, except that an object which became
//! invalid keeps its previous good version (a typo in one file never withdraws a working policy), and an object
//! whose file is gone is removed. Each reload returns the errors to log and whether anything changed.
use std::collections::BTreeMap;

use crate::{
    objects::Object,
    source::Loaded,
};

#[derive(Default)]
pub struct ConfigState {
    /// By `Kind namespace/name`.
    objects: BTreeMap<String, Object>,
}

pub struct Reload {
    pub changed: bool,
    pub errors: Vec<String>,
}

impl ConfigState {
    pub fn apply(&mut self, loaded: Loaded) -> Reload {
        let mut next = BTreeMap::new();
        for (_, object) in loaded.objects {
            next.insert(object.reference().to_string(), object);
        }
        let mut errors = Vec::new();
        for error in loaded.errors {
            // Keep the last good version of an object that is still there but no longer valid.
            if let Some(previous) = self.objects.get(&error.object) {
                next.entry(error.object.clone()).or_insert_with(|| previous.clone());
                errors.push(format!("{error} (keeping its previous version)"));
            } else {
                errors.push(error.to_string());
            }
        }
        let changed = next != self.objects;
        self.objects = next;
        Reload { changed, errors }
    }

    pub fn objects(&self) -> Vec<Object> {
        self.objects.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::load_text;

    fn load(text: &str) -> Loaded {
        let mut loaded = Loaded::default();
        load_text(std::path::Path::new("c.yaml"), text, &mut loaded);
        loaded
    }

    const GOOD: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo}\nspec: {ports: [{port: 80}]}\n";
    const BROKEN: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo}\nspec: {ports: [{port: eighty}]}\n";

    #[test]
    fn an_invalid_object_keeps_its_last_good_version_and_a_deleted_one_goes() {
        let mut state = ConfigState::default();
        assert!(state.apply(load(GOOD)).changed);
        let reload = state.apply(load(BROKEN));
        assert!(!reload.changed, "the good version stays in force");
        assert!(reload.errors[0].contains("keeping its previous version"), "{:?}", reload.errors);
        assert_eq!(state.objects().len(), 1);
        let reload = state.apply(load(""));
        assert!(reload.changed && state.objects().is_empty());
        let reload = state.apply(load(BROKEN));
        assert!(!reload.changed && !reload.errors[0].contains("keeping"), "nothing good to keep: {:?}", reload.errors);
    }

    #[test]
    fn an_invalid_virtual_service_keeps_its_last_good_routes() {
        let virtual_service = |weights: (i32, i32)| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: demo}}\nspec:\n  hosts: [reviews]\n  http: [{{route: [{{destination: {{host: reviews, subset: v1}}, weight: {}}}, {{destination: {{host: reviews, subset: v2}}, weight: {}}}]}}]\n",
                weights.0, weights.1
            )
        };
        let mut state = ConfigState::default();
        assert!(state.apply(load(&virtual_service((80, 20)))).changed);
        let good = state.objects();

        let reload = state.apply(load(&virtual_service((80, 30))));
        assert!(!reload.changed, "the 80/20 split stays in force");
        assert_eq!(reload.errors.len(), 1);
        assert!(
            reload.errors[0].contains("VirtualService demo/reviews: field spec.http[0].route: the weights")
                && reload.errors[0].ends_with("(keeping its previous version)"),
            "{:?}",
            reload.errors
        );
        assert_eq!(state.objects(), good);

        assert!(state.apply(load(&virtual_service((50, 50)))).changed, "a fixed version replaces it");
        let Object::VirtualService(vs) = &state.objects()[0] else { panic!() };
        assert_eq!(vs.spec.http[0].route.iter().map(|d| d.weight).collect::<Vec<_>>(), [50, 50]);
    }
}
