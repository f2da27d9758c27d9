// book-a's personalization chapter imports this component from its own site; here it just shows
// every variant, as a page without personalization would.
import React from "react";

export function ContentVariant({ children }) {
  return <div className="content-variant">{children}</div>;
}
