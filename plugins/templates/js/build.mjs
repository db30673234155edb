// Builds plugin.wasm from app.js against the WIT world `plugin` in wit/ (herald:channel@0.2.0).
// Run with `npm run build` (or `node build.mjs`) from this folder.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const { component } = await componentize({
  sourcePath: 'app.js',
  witPath: 'wit',
  worldName: 'plugin',
  // Herald does not provide wasi:http, so `fetch` (and the fetch event) must be left out,
  // or the component imports wasi:http and the host refuses to load it. stdio, clocks and
  // random stay: console.log/console.error, Date.now() and Math.random() need them.
  disableFeatures: ['http', 'fetch-event'],
});

await writeFile('plugin.wasm', component);
console.log(`wrote plugin.wasm (${component.length} bytes)`);
