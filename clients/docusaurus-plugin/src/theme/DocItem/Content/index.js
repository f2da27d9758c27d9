/* A doc's content, marked with its doc id: the chapter the widget asks about and the reader
 * rewrites (the server's chapter ids are Docusaurus doc ids). Keyed by the id so that moving to
 * another doc gives the reader a new element to mount on, never a reused one. */
import React from "react";
import Content from "@theme-init/DocItem/Content";
import { useActivePlugin, useDoc } from "@docusaurus/plugin-content-docs/client";
import { usePluginData } from "@docusaurus/useGlobalData";

export default function DocItemContentWithChapter(props) {
  const { metadata } = useDoc();
  const active = useActivePlugin();
  const { docsPluginId } = usePluginData("docusaurus-plugin-textbook-chat");
  const content = React.createElement(Content, props);
  if (!active || active.pluginId !== docsPluginId) return content;
  return React.createElement("div", { key: metadata.id, className: "textbook-chat-doc", "data-chapter": metadata.id }, content);
}
