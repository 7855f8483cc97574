// Validates rendered KEDA ScaledObjects against KEDA's own CRD schema, as published in
// the @kubernetes-models/keda package (validators generated from KEDA's CRDs), which
// `cargo xtask test` installs into .cache/keda-models. Also checks that the validator
// refuses a broken copy of each, so a validator that accepts anything fails the run.
//
// Usage: node tests/keda_check.mjs MODELS_DIR OBJECTS.json   (run by tests/deploy_check.py)
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modelsDir, objectsPath] = process.argv.slice(2);
const module = join(modelsDir, "node_modules/@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js");
const { ScaledObject } = await import(pathToFileURL(module).href);
const objects = JSON.parse(readFileSync(objectsPath, "utf8"));
let checked = 0;
for (const object of objects) {
  new ScaledObject(object).validate();
  for (const [what, breakIt] of [
    ["minReplicaCount as text", (o) => { o.spec.minReplicaCount = "three"; }],
    ["no scaleTargetRef", (o) => { delete o.spec.scaleTargetRef; }],
    ["a trigger without a type", (o) => { delete o.spec.triggers[0].type; }],
  ]) {
    const broken = structuredClone(object);
    breakIt(broken);
    let refused = false;
    try {
      new ScaledObject(broken).validate();
    } catch {
      refused = true;
    }
    if (!refused) {
      throw new Error(`the KEDA schema accepted a ScaledObject with ${what}`);
    }
  }
  checked += 1;
}
console.log(JSON.stringify({ checked }));
