//! The config in force: the objects of the last read of the directory, except that an object which became
//! invalid keeps its previous good version (a typo in one file never withdraws a working policy), so do the
//! objects of a file that could not be read to the end (unreadable, too large, not YAML from some document on),
//! and an object whose file is gone is removed. Each reload returns the errors to log and whether anything changed.
use std::{collections::BTreeMap, path::PathBuf};

use crate::{objects::Object, source::Loaded};

#[derive(Default)]
pub struct ConfigState {
    /// By `Kind namespace/name`, with the file each came from.
    objects: BTreeMap<String, (PathBuf, Object)>,
}

pub struct Reload {
    pub changed: bool,
    pub errors: Vec<String>,
}

impl ConfigState {
    pub fn apply(&mut self, loaded: Loaded) -> Reload {
        let mut next = BTreeMap::new();
        for (file, object) in loaded.objects {
            next.insert(object.reference().to_string(), (file, object));
        }
        // Whatever a file not read to the end held before stays, unless the part that was read has it anew.
        let mut kept_from = BTreeMap::<&PathBuf, usize>::new();
        for (reference, (file, object)) in &self.objects {
            if let Some(incomplete) = loaded.incomplete.iter().find(|path| file.starts_with(path)) {
                if !next.contains_key(reference) {
                    next.insert(reference.clone(), (file.clone(), object.clone()));
                    *kept_from.entry(incomplete).or_default() += 1;
                }
            }
        }
        let mut errors = Vec::new();
        for error in loaded.errors {
            // Keep the last good version of an object that is still there but no longer valid.
            if let Some(previous) = self.objects.get(&error.object) {
                next.entry(error.object.clone()).or_insert_with(|| previous.clone());
                errors.push(format!("{error} (keeping its previous version)"));
            } else if let Some(kept) = kept_from.remove(&error.file) {
                errors.push(format!("{error} (keeping the {kept} object(s) it held before)"));
            } else {
                errors.push(error.to_string());
            }
        }
        let changed = next != self.objects;
        self.objects = next;
        Reload { changed, errors }
    }

    pub fn objects(&self) -> Vec<Object> {
        self.objects.values().map(|(_, object)| object.clone()).collect()
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
    fn a_file_that_stops_being_yaml_keeps_the_objects_it_held() {
        const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: demo}\n";
        let mut state = ConfigState::default();
        assert!(state.apply(load(&format!("{GOOD}---\n{POD}"))).changed);
        let before = state.objects();
        assert_eq!(before.len(), 2);

        // The service still parses; the pod's document no longer does: the pod stays as it was.
        let reload = state.apply(load(&format!("{GOOD}---\nkind: [Pod\n")));
        assert!(!reload.changed, "{:?}", reload.errors);
        assert_eq!(state.objects(), before);
        assert_eq!(reload.errors.len(), 1);
        assert!(
            reload.errors[0].starts_with("c.yaml: document 2: not YAML") && reload.errors[0].ends_with("(keeping the 1 object(s) it held before)"),
            "{:?}",
            reload.errors
        );

        // Unreadable from its first byte: everything it held stays.
        let mut unreadable = Loaded::default();
        unreadable.errors.push(crate::source::ObjectError { file: "c.yaml".into(), object: "file".into(), message: "permission denied".into() });
        unreadable.incomplete.insert("c.yaml".into());
        assert!(!state.apply(unreadable).changed);
        assert_eq!(state.objects(), before);

        // Fixed, without the pod: now it goes.
        assert!(state.apply(load(GOOD)).changed);
        assert_eq!(state.objects().len(), 1);
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
