/* The site's Root with the chat loaded once the page has hydrated (see ../client/load.js). */
import React, { useEffect } from "react";
import Root from "@theme-init/Root";
import { usePluginData } from "@docusaurus/useGlobalData";
import { loadChat } from "../client/load";

export default function RootWithTextbookChat(props) {
  const options = usePluginData("docusaurus-plugin-textbook-chat");
  useEffect(() => {
    // The token code (Better-Auth's client by default) is its own chunk, fetched when the chat
    // first asks for a token.
    loadChat(options, () => import("@textbook-chat/get-token")).catch((error) => console.error(error));
  }, []);
  return React.createElement(Root, props);
}
