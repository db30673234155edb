// Herald for VS Code: starts `herald lsp` and connects it to .rhai workflow scripts and
// .liquid templates.
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function serverOptions() {
  const config = vscode.workspace.getConfiguration("herald");
  const command = config.get("server.path", "herald");
  const extraEnv = config.get("server.extraEnv", {});
  const run = {
    command,
    args: ["lsp"],
    transport: TransportKind.stdio,
    options: { env: Object.assign({}, process.env, extraEnv) },
  };
  return { run, debug: run };
}

function clientOptions() {
  return {
    documentSelector: [
      { scheme: "file", language: "herald" },
      { scheme: "untitled", language: "herald" },
      { scheme: "file", language: "herald-liquid" },
    ],
    synchronize: {
      // The server also registers its own watchers; this covers clients of older VS Codes.
      fileEvents: vscode.workspace.createFileSystemWatcher("**/{*.rhai,*.liquid,herald.toml}"),
    },
    outputChannelName: "Herald",
  };
}

async function start() {
  client = new LanguageClient("herald", "Herald", serverOptions(), clientOptions());
  await client.start();
}

async function activate(context) {
  context.subscriptions.push(
    vscode.commands.registerCommand("herald.restartServer", async () => {
      if (client) {
        await client.stop();
      }
      await start();
    })
  );
  try {
    await start();
  } catch (err) {
    vscode.window.showErrorMessage(
      `Herald: could not start \`herald lsp\` (${err}). Set herald.server.path to the herald binary.`
    );
  }
}

async function deactivate() {
  if (client) {
    await client.stop();
  }
}

module.exports = { activate, deactivate };
