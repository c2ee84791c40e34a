neither is this;
